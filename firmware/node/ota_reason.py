# What a node tells the central or platform when an update is refused: (code, text) of a
# ManifestError(code, text), of our ValueError(code, text), or of any other error (no
# code: an OSError's number is an errno, not a reason). Both OTA transports use it.
def reason(exc, chars=200):
    args = exc.args
    code = getattr(exc, "code", None)
    if code is None and isinstance(exc, ValueError) and args and isinstance(args[0], int):
        code = args[0]
    text = getattr(exc, "text", None)
    if text is None:
        text = args[-1] if args and isinstance(args[-1], str) else repr(exc)
    return code, str(text)[:chars]
