"""A small NBD client (reads and block status over a unix socket), for qemu-nbd.

Protocol: the NBD protocol specification (NetworkBlockDevice/nbd, ``doc/proto.md``), fixed
newstyle handshake with ``NBD_OPT_STRUCTURED_REPLY``, ``NBD_OPT_SET_META_CONTEXT``
(``base:allocation``) and ``NBD_OPT_GO``; transmission with ``NBD_CMD_READ`` and
``NBD_CMD_BLOCK_STATUS``. A read is sent as several requests at once and their replies are
taken as they come, so qemu-nbd reads the image while this side copies from the socket.

Why not ovirt-imageio's client: it is GPLv2+ and ovfkit is Apache-2.0; libnbd's Python binding
is not on PyPI. The client covers only what a reader of qemu-nbd needs. It imports nothing but
the standard library and ovfkit.errors: the VMDK writer's worker processes read through it
(ovfkit.vmdk.worker), on a connection the parent negotiated (``NbdClient.adopt``).
"""

from __future__ import annotations

import contextlib
import socket
import struct

from ..errors import OperationFailedError, OvfkitError, OvfkitIOError

__all__ = ["NbdClient", "NbdError"]
# Handshake (proto.md "Fixed newstyle negotiation").
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_ABORT = 2
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_SET_META_CONTEXT = 10
REP_ACK = 1
REP_INFO = 3
REP_META_CONTEXT = 4
REP_FLAG_ERROR = 1 << 31
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

# Transmission (proto.md "Transmission phase").
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
CMD_READ = 0
CMD_DISC = 2
CMD_BLOCK_STATUS = 7
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR_BIT = 1 << 15
STATE_HOLE = 1 << 0  # base:allocation: unallocated in the whole chain
STATE_ZERO = 1 << 1  # base:allocation: reads as zeros
BASE_ALLOCATION = b"base:allocation"

_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY_REST = struct.Struct(">IQ")  # after the magic: error, cookie
_STRUCTURED_REST = struct.Struct(">HHQI")  # after the magic: flags, type, cookie, length
_OPT = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")

# A read is cut into requests of 1 MiB, up to 8 in flight (qemu-nbd works on them in parallel
# coroutines, so it reads ahead while this side copies); block status asks for at most 2 GiB at
# a time (a u32 length).
READ_REQUEST = 1024 * 1024
MAX_IN_FLIGHT = 8
MAX_STATUS = 2 * 1024 * 1024 * 1024
_MAX_OPTION_REPLY = 1024 * 1024  # strings in the handshake are at most 4 KiB (proto.md)
_MAX_METADATA_CHUNK = 64 * 1024 * 1024  # 8 M block status descriptors

_ERRNO_NAMES = {1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC", 75: "EOVERFLOW"}


class NbdError(OperationFailedError):
    """The NBD server refused a request or broke the protocol."""


def _nbd_failure(what: str, error: int, message: str = "") -> OvfkitError:
    name = _ERRNO_NAMES.get(error, f"error {error}")
    details = f"NBD {what}: {name}" + (f": {message}" if message else "")
    return OvfkitIOError(details) if error == 5 else NbdError(details)


class NbdClient:
    """A blocking NBD client for one export over a unix socket (newstyle, structured replies).

    Not thread safe: one caller at a time, as the ImageSource protocol is used.
    """

    def __init__(
        self,
        sock: socket.socket,
        export_name: str = "",
        *,
        negotiated: tuple[int, int] | None = None,
    ) -> None:
        self._sock = sock
        self._cookie = 0
        self._broken = False
        self._context_id: int | None = None
        self.export_size = 0
        self.transmission_flags = 0
        self.max_block = 32 * 1024 * 1024
        if negotiated is None:
            self._handshake(export_name.encode())
        else:
            self.export_size, self.max_block = negotiated

    @property
    def negotiated(self) -> tuple[int, int]:
        """(export size, maximum block size): what ``adopt`` needs to go on with this
        connection in another process (structured replies were negotiated)."""
        return self.export_size, self.max_block

    def fileno(self) -> int:
        return self._sock.fileno()

    @classmethod
    def adopt(cls, sock: socket.socket, negotiated: tuple[int, int]) -> NbdClient:
        """A client for a connection negotiated elsewhere (``negotiated`` is that client's
        ``negotiated``), for reads only: block status needs the meta context id."""
        return cls(sock, negotiated=negotiated)

    @classmethod
    def connect_unix(cls, path: str, export_name: str = "") -> NbdClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return cls(sock, export_name)
        except BaseException:
            sock.close()
            raise

    # -- low-level I/O ---------------------------------------------------------------------------

    def _recv_into(self, buf: memoryview) -> None:
        got = 0
        while got < len(buf):
            n = self._sock.recv_into(buf[got:])
            if n == 0:
                raise NbdError("NBD server closed the connection")
            got += n

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    # -- handshake ---------------------------------------------------------------------------

    def _handshake(self, name: bytes) -> None:
        magic, opt_magic, flags = struct.unpack(">QQH", self._recv(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT:
            raise NbdError(f"not a newstyle NBD server (magic {magic:#x}, {opt_magic:#x})")
        if not flags & FLAG_FIXED_NEWSTYLE:
            raise NbdError("NBD server does not support fixed newstyle negotiation")
        client_flags = FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)
        self._sock.sendall(struct.pack(">I", client_flags))

        self._send_option(OPT_STRUCTURED_REPLY, b"")
        self._expect_ack(OPT_STRUCTURED_REPLY, "structured replies")

        query = struct.pack(">I", len(BASE_ALLOCATION)) + BASE_ALLOCATION
        payload = struct.pack(">I", len(name)) + name + struct.pack(">I", 1) + query
        self._send_option(OPT_SET_META_CONTEXT, payload)
        while True:
            rtype, data = self._option_reply(OPT_SET_META_CONTEXT)
            if rtype == REP_ACK:
                break
            if rtype == REP_META_CONTEXT and data[4:] == BASE_ALLOCATION:
                self._context_id = struct.unpack_from(">I", data)[0]
        if self._context_id is None:
            raise NbdError("NBD server does not offer the base:allocation meta context")

        payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self._send_option(OPT_GO, payload)
        while True:
            rtype, data = self._option_reply(OPT_GO)
            if rtype == REP_ACK:
                break
            if rtype == REP_INFO:
                (info,) = struct.unpack_from(">H", data)
                if info == INFO_EXPORT:
                    self.export_size, self.transmission_flags = struct.unpack_from(">QH", data, 2)
                elif info == INFO_BLOCK_SIZE:
                    _min, _preferred, self.max_block = struct.unpack_from(">III", data, 2)

    def _send_option(self, option: int, data: bytes) -> None:
        self._sock.sendall(_OPT.pack(IHAVEOPT, option, len(data)) + data)

    def _option_reply(self, option: int) -> tuple[int, bytes]:
        magic, opt, rtype, length = _OPT_REPLY.unpack(self._recv(_OPT_REPLY.size))
        if magic != OPT_REPLY_MAGIC or opt != option:
            raise NbdError(f"bad option reply (magic {magic:#x}, option {opt})")
        if length > _MAX_OPTION_REPLY:
            raise NbdError(f"NBD option reply of {length} bytes")
        data = self._recv(length)
        if rtype & REP_FLAG_ERROR:
            message = data.decode("utf-8", "replace")
            raise NbdError(f"NBD option {option} refused (reply {rtype:#x}) {message}".strip())
        return rtype, data

    def _expect_ack(self, option: int, what: str) -> None:
        rtype, _ = self._option_reply(option)
        if rtype != REP_ACK:
            raise NbdError(f"NBD server did not accept {what} (reply {rtype})")

    # -- transmission ------------------------------------------------------------------------

    def _request(self, cmd: int, offset: int, length: int, flags: int = 0) -> int:
        if self._broken:
            raise NbdError("the NBD connection failed earlier and cannot be used again")
        self._cookie += 1
        self._sock.sendall(_REQUEST.pack(REQUEST_MAGIC, flags, cmd, self._cookie, offset, length))
        return self._cookie

    def _metadata(self, length: int) -> bytes:
        """A non-data chunk's payload (block status, error, skipped types), bounded."""
        if length > _MAX_METADATA_CHUNK:
            raise NbdError(f"NBD reply chunk of {length} bytes")
        return self._recv(length)

    def _any_reply_header(self) -> tuple[bool, int, int, int, int]:
        """(structured, flags, type, length, cookie) of the next reply; a simple reply with an
        error is raised at once (it ends its request, and a failed read fails the call)."""
        (magic,) = struct.unpack(">I", self._recv(4))
        if magic == STRUCTURED_REPLY_MAGIC:
            flags, rtype, cookie, length = _STRUCTURED_REST.unpack(
                self._recv(_STRUCTURED_REST.size)
            )
            return True, flags, rtype, length, cookie
        if magic == SIMPLE_REPLY_MAGIC:
            error, cookie = _SIMPLE_REPLY_REST.unpack(self._recv(_SIMPLE_REPLY_REST.size))
            if error:
                raise _nbd_failure("request", error)
            return False, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0, cookie
        raise NbdError(f"bad NBD reply magic {magic:#x}")

    def _reply_header(self, cookie: int) -> tuple[bool, int, int, int]:
        structured, flags, rtype, length, got = self._any_reply_header()
        if got != cookie:
            raise NbdError(f"NBD reply for request {got}, expected {cookie}")
        return structured, flags, rtype, length

    def _raise_chunk_error(self, what: str, length: int) -> None:
        data = self._metadata(length)
        if len(data) < 6:
            raise NbdError(f"NBD error chunk of {length} bytes")
        error, msg_len = struct.unpack_from(">IH", data)
        raise _nbd_failure(what, error, data[6 : 6 + msg_len].decode("utf-8", "replace"))

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` (at most ``max_block`` bytes) with the export's bytes at ``offset``."""
        self.read_many([(offset, buf)])

    def read_many(self, requests: list[tuple[int, memoryview]]) -> None:
        """Send every read request, then take the replies as they come: qemu-nbd serves them
        concurrently and may interleave their chunks, told apart by cookie. Keeping several
        requests in flight lets qemu read the image while this side copies from the socket."""
        try:
            self._read_many(requests)
        except BaseException:
            # Replies of the other requests may still be on the wire: the stream is out of
            # step, so nothing more is read from it.
            self._broken = True
            raise

    def _read_many(self, requests: list[tuple[int, memoryview]]) -> None:
        pending: dict[int, tuple[int, memoryview]] = {}
        for offset, buf in requests:
            pending[self._request(CMD_READ, offset, len(buf))] = (offset, buf)
        while pending:
            structured, flags, rtype, chunk_len, cookie = self._any_reply_header()
            if cookie not in pending:
                raise NbdError(f"NBD reply for unknown request {cookie}")
            offset, buf = pending[cookie]
            length = len(buf)
            if not structured:
                self._recv_into(buf)
                del pending[cookie]
                continue
            if rtype == REPLY_TYPE_OFFSET_DATA:
                if chunk_len < 8:
                    raise NbdError(f"NBD data chunk of {chunk_len} bytes")
                (at,) = struct.unpack(">Q", self._recv(8))
                start = at - offset
                size = chunk_len - 8
                if start < 0 or start + size > length:
                    raise NbdError(f"NBD read chunk {at}+{size} outside request {offset}+{length}")
                self._recv_into(buf[start : start + size])
            elif rtype == REPLY_TYPE_OFFSET_HOLE:
                if chunk_len != 12:
                    raise NbdError(f"NBD hole chunk of {chunk_len} bytes")
                at, size = struct.unpack(">QI", self._recv(12))
                start = at - offset
                if start < 0 or start + size > length:
                    raise NbdError(f"NBD hole chunk {at}+{size} outside request {offset}+{length}")
                buf[start : start + size] = bytes(size)
            elif rtype & REPLY_TYPE_ERROR_BIT:
                self._raise_chunk_error(f"read at {offset}", chunk_len)
            else:
                self._metadata(chunk_len)  # NONE, or a chunk type a reader may skip
            if flags & REPLY_FLAG_DONE:
                del pending[cookie]

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """(length, flags) descriptors of base:allocation from ``offset``, covering at least
        one byte and at most ``length`` bytes."""
        cookie = self._request(CMD_BLOCK_STATUS, offset, length)
        result: list[tuple[int, int]] = []
        while True:
            _structured, flags, rtype, chunk_len = self._reply_header(cookie)
            if rtype == REPLY_TYPE_BLOCK_STATUS:
                data = self._metadata(chunk_len)
                if chunk_len < 12 or (chunk_len - 4) % 8:
                    raise NbdError(f"NBD block status chunk of {chunk_len} bytes")
                (context,) = struct.unpack_from(">I", data)
                if context == self._context_id and not result:
                    result = [
                        struct.unpack_from(">II", data, pos) for pos in range(4, chunk_len, 8)
                    ]
            elif rtype & REPLY_TYPE_ERROR_BIT:
                self._raise_chunk_error(f"block status at {offset}", chunk_len)
            else:
                self._metadata(chunk_len)
            if flags & REPLY_FLAG_DONE:
                break
        if not result:
            raise NbdError(f"NBD block status at {offset} returned no extents")
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._request(CMD_DISC, 0, 0)
        self._sock.close()

    def forget(self) -> None:
        """Close this process's descriptor of the connection without ending it: another
        process (a worker it was handed to) reads through it now."""
        self._sock.close()
