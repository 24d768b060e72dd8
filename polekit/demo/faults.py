"""Things a user (or a test) can break in the demo on purpose, to see the verdict catch
them; kept apart from the street so ``polekit --help`` does not import the whole demo."""

FAULTS = {
    "dead-pole": "pole 1 loses power just before the platform dims its lamp",
    "dead-radio": "community kit 1's radio dies just before the first SOS press",
}
