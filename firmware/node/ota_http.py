# OTA over Wi-Fi for a node with its own uplink (MqttLink): an `ota` command names the URL
# of a signed bundle's folder ({"id": 7, "ota": "http://host:8080/bundles/0.2/"}); the node
# fetches manifest.sig and manifest.cbor there, then each file at its board path under the
# URL, from where the staging stands: `Range: bytes=N-`, so a dropped connection or a reset
# costs only what never reached the flash. Then the session's commit (hashes, install,
# reset).
#
# The signature is checked as the Modbus and BLE links do it (ota/modbus_window.py,
# ota_gatt.py): the header (signature, then manifest) goes to the flash (verify.HEADER),
# is marked (verify.PENDING) and the node resets; node.start checks it before the node
# starts (verify.boot_check), in a heap the running node's tasks do not hold, writes the
# verdict (verify.VERIFIED) and resets again. The command (PULL_KEY in the node's state)
# survives those resets: the node takes the verdict at start-up (resume) and fetches the
# files, or answers the command with the refusal. A resumed pull of the same bundle is not
# checked again. A node that sleeps between wakes (the water node) has no heap for the pull
# beside its drivers and MQTT client: it keeps the command (queue) and runs it in boots of
# its own (node/ota_wake.py).
#
# Plain HTTP on purpose: the bundle is signed (Ed25519 over the manifest, every file's
# SHA-256 in it) and the node checks both, so the transport needs no trust; the emulated
# board has no TLS (docs/hil.md). The sockets block (the chip's, hil/vmlib/socket.py on the
# emulated board) for at most timeout_s per read; between reads of CHUNK bytes the pull
# yields to the loop: the watchdog is fed, other tasks run, and the emulated VM collects
# its garbage only there (I16.md).
import asyncio
import gc
import socket

from .ota import PULL_KEY, REPORT_KEY
from .ota_reason import reason

CHUNK = 512  # bytes per read: small allocations
# a pause between reads that the emulated VM's scheduler cannot skip: its asyncio runs every
# task that is due in one call from JavaScript, so sleep_ms(0) never returns there and
# never lets it collect; 1 ms does. A collection is asked for at each pause (verify.pause:
# ~1 ms on the chip): the garbage of a read and a write never piles up beside the node's
# own, and the free heap measured after it is what the update really leaves
YIELD_MS = 1
HEAD_MAX = 2048  # a response's status line and headers
MANIFEST_MAX = 8192
SIG_BYTES = 64
ATTEMPTS = 5  # connections in a row that staged nothing before the pull gives up


# (host, port, path) of an http:// URL; ValueError for anything else
def parse_url(url):
    if not isinstance(url, str) or not url.startswith("http://"):
        raise ValueError("ota: %r is not an http:// URL (the bundle is signed: plain HTTP)" % url)
    rest = url[7:]
    slash = rest.find("/")
    hostport, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    host, _, port = hostport.partition(":")
    if not host or (port and not port.isdigit()):
        raise ValueError("ota: %r has no usable host[:port]" % url)
    if not path.endswith("/"):
        path += "/"
    return host, int(port) if port else 80, path


class HttpPull:
    # ``session``: the OtaSession the files are staged into (set once the verdict is in)
    def __init__(self, url, timeout_s=10, session=None):
        self.session = session
        self.url = url
        self.host, self.port, self.path = parse_url(url)
        self.timeout_s = timeout_s
        self.requests = 0
        self.fetched = 0  # file bytes staged by this pull
        self.heap_low = None  # the least gc.mem_free() seen between reads

    def _open(self, name, start):
        # a GET of name under the bundle's path from byte `start`: (socket, bytes of the
        # body already read, bytes of it to skip: the server ignored the Range)
        s = socket.socket()
        try:
            s.settimeout(self.timeout_s)
            s.connect(socket.getaddrinfo(self.host, self.port)[0][-1])
            req = "GET %s%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (
                self.path,
                name,
                self.host,
            )
            if start:
                req += "Range: bytes=%d-\r\n" % start
            s.write((req + "\r\n").encode())
            self.requests += 1
            head = b""
            while True:
                end = head.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(head) > HEAD_MAX:
                    raise ValueError("ota: GET %s: headers over %d bytes" % (name, HEAD_MAX))
                chunk = s.recv(256)
                if not chunk:
                    raise OSError(104, "ota: GET %s: closed in the headers" % name)
                head += chunk
            lines = head[:end].decode().split("\r\n")
            body = head[end + 4 :]
            parts = lines[0].split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            skip = 0
            if status == 206:
                ranged = [x for x in lines if x.lower().startswith("content-range:")]
                if not ranged or not ranged[0].split()[-1].startswith("%d-" % start):
                    raise ValueError("ota: GET %s: a range other than from %d" % (name, start))
            elif status == 200:
                skip = start  # the whole file: what the staging has is dropped as it comes
            else:
                raise ValueError("ota: GET %s%s: HTTP %d" % (self.path, name, status))
            return s, body, skip
        except BaseException:
            s.close()
            raise

    async def _whole(self, name, limit):
        s, data, _ = self._open(name, 0)
        try:
            while True:
                if len(data) > limit:
                    raise ValueError("ota: %s is over %d bytes" % (name, limit))
                await asyncio.sleep_ms(YIELD_MS)
                chunk = s.recv(CHUNK)
                if not chunk:
                    return data
                data += chunk
        finally:
            s.close()

    async def _file(self, index, path, size, start):
        # one GET of file ``index`` (``path``, ``size`` bytes) from ``start``, staged as it
        # comes; returns the bytes staged
        from .ota.verify import pause

        s, data, skip = self._open(path, start)
        staged = 0
        pos = start
        try:
            while True:
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                if data:
                    expect = self.session.write(index, pos, data)
                    if expect != pos + len(data):  # the session stands elsewhere: ask need()
                        return staged
                    staged += len(data)
                    pos = expect
                    if pos >= size:
                        return staged
                await pause(YIELD_MS, True)
                self._heap()
                data = s.recv(CHUNK)
                if not data:
                    raise OSError(104, "ota: %s cut at byte %d of %d" % (path, pos, size))
        finally:
            s.close()
            self.fetched += staged

    def _heap(self):
        free = gc.mem_free()
        if self.heap_low is None or free < self.heap_low:
            self.heap_low = free

    # manifest.sig, then manifest.cbor after it in verify.HEADER (the signature, then the
    # manifest: what a check boot checks), written a read at a time: the manifest (5-8 KB)
    # is never whole in the heap, where a growing copy of it took twice that between two
    # collections beside the node's MQTT client. Its size in bytes.
    async def fetch_header(self):
        from .ota.verify import HEADER

        sig = await self._whole("manifest.sig", SIG_BYTES)
        if len(sig) != SIG_BYTES:
            raise ValueError(1, "manifest.sig has %d bytes, not %d" % (len(sig), SIG_BYTES))
        _makedir(HEADER)
        with open(HEADER, "wb") as f:
            f.write(sig)
            return SIG_BYTES + await self._to_file("manifest.cbor", f, MANIFEST_MAX)

    # the body of GET ``name`` written to the open file ``f`` as it comes; its size
    async def _to_file(self, name, f, limit):
        s, data, _ = self._open(name, 0)
        size = 0
        try:
            while True:
                size += len(data)
                if size > limit:
                    raise ValueError("ota: %s is over %d bytes" % (name, limit))
                f.write(data)
                await asyncio.sleep_ms(YIELD_MS)
                data = s.recv(CHUNK)
                if not data:
                    return size
        finally:
            s.close()

    # every file the staging lacks, into the session (begun on the checked manifest).
    # Raises ValueError(code, text) for a refusal, OSError when the server stayed
    # unreachable for ATTEMPTS tries in a row
    async def fetch_files(self):
        session = self.session
        failures = 0
        while True:
            need = session.need()
            if need is None:
                return
            index, start = need
            try:
                if await self._file(index, session.paths[index], session.sizes[index], start):
                    failures = 0
            except OSError as exc:
                failures += 1
                print("ota: %r (%d/%d)" % (exc, failures, ATTEMPTS))
                if failures >= ATTEMPTS:
                    raise
                await asyncio.sleep_ms(200 * 2**failures)


def _makedir(path):
    import os

    try:
        os.mkdir(path[: path.rfind("/")])
    except OSError:
        pass  # it exists


# The answer to an `ota` command that a node runs later, at its next start (resume): the
# command is kept in the node's state (PULL_KEY, its header not fetched yet); ValueError
# for a URL that is not http://.
def queue(state, code, body):
    url = body.get("ota")
    parse_url(url)  # a bad URL is the command's own error
    state.set(PULL_KEY, [code, body.get("id"), url, False], now=True)
    return {"ok": True, "ota": "fetching"}


class OtaCommand:
    # the `ota` command of an MqttLink node: start(code, body) from the command handler
    # answers at once ({"ok": true, "ota": "fetching"}); a refusal or a failure later goes
    # out as a second result for the same id, and the new version, once running, reports
    # its status as the last one. resume() at start-up (from the node's loop) sends that
    # report, or goes on with a command kept for later (queue) or with an update whose
    # signature the check boot has just checked. ``outbox``: where the later results go;
    # ``reset``: the node's planned reset (its state flushed first). Later results are JSON.
    def __init__(self, outbox, state, make_session, reset, timeout_s=10):
        self.outbox = outbox
        self.state = state
        self.make_session = make_session
        self.reset = reset
        self.timeout_s = timeout_s
        self.task = None
        self.pull = None

    def start(self, code, body):
        url = body.get("ota")
        parse_url(url)  # a bad URL is the command's own error
        if self.task is not None:
            raise ValueError("ota: an update is running already")
        self._go(code, body.get("id"), url, False)
        return {"ok": True, "ota": "fetching"}

    # the pull under way, to its end: it returns when the pull failed (its result is in
    # the outbox) or there was none; an update that went through, or one that needs its
    # check boot, resets the node instead
    async def finish(self):
        task = self.task
        if task is not None:
            await task

    def _go(self, code, cid, url, checked):
        self.pull = pull = HttpPull(url, self.timeout_s)
        self.task = asyncio.create_task(self._run(pull, code, cid, checked))

    async def _run(self, pull, code, cid, checked):
        import os

        from .ota.verify import HEADER, pause, verdict

        try:
            if not checked:
                await pull.fetch_header()
            # the check boot's verdict on the header (the files' table read as begin takes it)
            info, ident = verdict(os.stat(HEADER)[6])
            if info is None:
                if checked:  # the check boot failed in a way of its own (its log says)
                    raise ValueError("ota: the signature check gave no verdict; send it again")
                await self._check_boot(pull, code, cid)
                return
            pull.session = session = self.make_session()
            await session.begin(None, None, info, ident)
            del info  # the session keeps the files' paths and sizes: the table is garbage
            await pause(1, True)
            await pull.fetch_files()
            # the version that runs after the reset answers the command (resume)
            self.state.set(REPORT_KEY, [code, cid, pull.heap_low], now=True)
            await session.commit()  # hashes, install, reset: no return
        except (ValueError, TypeError, OSError) as exc:
            n, text = reason(exc)
            self.state.set(REPORT_KEY, None, now=True)
            self._result(code, {"id": cid, "ok": False, "code": n, "error": text})
        except Exception as exc:  # noqa: BLE001 - a bug or MemoryError: answered, printed
            import sys

            sys.print_exception(exc)
            self.state.set(REPORT_KEY, None, now=True)
            text = "internal error (%s); see the node's log" % type(exc).__name__
            self._result(code, {"id": cid, "ok": False, "code": None, "error": text})
        finally:
            self.task = None

    # the header is marked for a check boot and the node resets into it; the command goes
    # on at the start after it (resume)
    async def _check_boot(self, pull, code, cid):
        import os

        from .ota.verify import HEADER, PENDING, pause

        self.state.set(PULL_KEY, [code, cid, pull.url, True], now=True)
        with open(PENDING, "w") as f:
            f.write("%d\n" % os.stat(HEADER)[6])
        print("ota: checking the signature in a boot of its own")
        await pause(50)  # what the outbox holds is on flash already: nothing else to wait for
        self.reset()

    def _result(self, code, result):
        import json

        self.outbox.put("cmd-result", code, json.dumps(result).encode())

    # at start-up, from the node's loop: a command kept for later (queue) starts, an
    # update whose header the check boot has just checked goes on (the files fetched, or
    # the refusal answered); the result of the
    # command whose update led to this version goes out with the session's status (the
    # version running, a rollback's reason) and the least free heap the pull saw
    def resume(self):
        pulling = self.state.get(PULL_KEY)
        if pulling:
            code, cid, url = pulling[:3]
            checked = pulling[3] if len(pulling) > 3 else True  # an earlier version's: checked
            self.state.set(PULL_KEY, None, now=True)  # once: a pull that resets comes back
            self._go(code, cid, url, checked)
            return
        pending = self.state.get(REPORT_KEY)
        if not pending:
            return
        code, cid, heap_low = pending
        self.state.set(REPORT_KEY, None, now=True)
        status = self.make_session().status()
        ok = not status.get("rollback")
        self._result(code, {"id": cid, "ok": ok, "ota": status, "heap_low": heap_low})
