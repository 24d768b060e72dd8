"""Fuzz targets: one module per parser, found by name (``make fuzz TARGETS=cbor``).

The pattern, for a new target ``targets/<name>.py``::

    from polekit.protocols.errors import SenMLError
    import fuzzkit

    RAISES = (SenMLError,)  # what the parser is documented to raise; anything else fails

    def fuzz(data: bytes) -> None:
        # one input: call the parser; assert what must hold when it accepts the input
        senml.decode_json(data)

    def seeds() -> list[bytes]:
        # valid encodings (tests/vectors/ via fuzzkit.vectors) the mutator starts from
        return [ex["json"].encode() for ex in fuzzkit.vectors("senml")["examples"]]

    INPUTS = ...  # optional: a hypothesis strategy of bytes, for structure-aware inputs

``fuzz`` takes bytes whatever the parser takes, so every input can be saved as a file in
corpus/<name>/ and replayed. Nothing else is needed: pytest and ``make fuzz`` find the module.
"""
