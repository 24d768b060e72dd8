# `import usocket` works on the chip: socket is an extensible built-in there
# (ports/esp32/modsocket.c v1.27.0 line 1033), and py/objmodule.c (lines 204-215) lets
# `ufoo` name any extensible built-in `foo`. The emulated socket is a ROM file, so the alias
# is this file; struct, binascii and errno are the VM's own built-ins and have it already.
from socket import *  # noqa: F403
