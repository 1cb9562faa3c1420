"""CoAP block-wise transfers (RFC 7959): a body cut into Block1/Block2 datagrams, put back together.

NB-IoT modules and LwM2M clients send bodies larger than a block (16 to 1024 bytes) one block per
datagram, so an identifier, or the Base64 run holding it, can be split across datagrams. Every
datagram is still analysed on its own; this adds, once a transfer ends (all its blocks arrived,
in any order; another body on the same flow; or the end of the capture), one more unit: the blocks' payloads
joined in block order, scanned as `coap-payload`.

Bounded: a transfer keeps at most MAX_BODY bytes, at most MAX_TRANSFERS wait at once and hold at
most MAX_PENDING bytes together (the oldest is joined early, with what it has, past either).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from harness.analyzer.decoders import COAP_PORTS, parse_coap
from harness.analyzer.model import Encoding, Flow, StreamUnit

BLOCK2, BLOCK1 = 23, 27  # option numbers: response body, request body
URI_PATH = 11
MAX_BODY = 1 << 20
MAX_TRANSFERS = 256
MAX_PENDING = 8 << 20  # payload bytes held across all open transfers


@dataclass(slots=True)
class _Transfer:
    flow: Flow
    from_client: bool
    app: str | None
    blocks: dict[int, tuple[bytes, int, float]] = field(default_factory=dict)  # offset -> payload, frame, time
    size: int = 0
    end: int = MAX_BODY + 1  # known once the last block arrived


class BlockAssembler:
    """Feed it every unit in capture order; it yields the joined bodies of finished transfers."""

    def __init__(self) -> None:
        self._open: dict[tuple[Flow, bool, int], _Transfer] = {}
        self._pending = 0
        # (offset, payload) of the last block of each key's last joined transfer: sent again after
        # the transfer ended (its ACK was lost), it is a retransmission, not a new body
        self._last: dict[tuple[Flow, bool, int], tuple[int, bytes]] = {}

    def feed(self, unit: StreamUnit) -> Iterator[StreamUnit]:
        block = _block_of(unit)
        if block is None:
            return
        number, offset, more, payload = block
        key = (unit.flow, unit.from_client, number)
        transfer = self._open.get(key)
        if transfer is None and self._last.get(key) == (offset, payload):
            return
        if transfer is not None and offset in transfer.blocks and transfer.blocks[offset][0] != payload:
            yield from self._join(key)  # not a retransmission: a new body on the same flow
            transfer = None
        if transfer is None:
            if len(self._open) >= MAX_TRANSFERS:
                yield from self._join(next(iter(self._open)))
            transfer = self._open[key] = _Transfer(unit.flow, unit.from_client, unit.app)
        if offset not in transfer.blocks and transfer.size + len(payload) <= MAX_BODY:
            transfer.blocks[offset] = (payload, unit.frames[0] if unit.frames else 0,
                                       unit.times[0] if unit.times else 0.0)
            transfer.size += len(payload)
            self._pending += len(payload)
        if not more:
            transfer.end = offset + len(payload)
        if transfer.size >= transfer.end:  # the last block and all before it (in any order)
            yield from self._join(key)
        while self._pending > MAX_PENDING:  # the oldest are joined early, with what they have
            yield from self._join(next(iter(self._open)))

    def _join(self, key: tuple[Flow, bool, int]) -> Iterator[StreamUnit]:
        transfer = self._open.pop(key)
        self._pending -= transfer.size
        if transfer.blocks:
            last = max(transfer.blocks)
            self._last.pop(key, None)
            self._last[key] = (last, transfer.blocks[last][0])
            if len(self._last) > MAX_TRANSFERS:
                del self._last[next(iter(self._last))]
        yield from _joined(transfer)

    def finish(self) -> Iterator[StreamUnit]:
        """The transfers the capture ended in the middle of: what arrived of them."""
        while self._open:
            yield from self._join(next(iter(self._open)))


def _block_of(unit: StreamUnit) -> tuple[int, int, bool, bytes] | None:
    """(Block option number, byte offset, more blocks follow, payload) of a CoAP datagram
    carrying one block of a body; None for anything else."""
    if unit.flow.proto != "udp" or unit.location is not None:
        return None
    data = unit.data
    parsed = parse_coap(data)
    if parsed is None:
        return None
    code, options, payload = parsed
    if payload is None or not code:
        return None
    flow = unit.flow
    if flow.sport not in COAP_PORTS and flow.dport not in COAP_PORTS and not any(
            number == URI_PATH for number, _, _ in options):
        return None
    body_option = BLOCK1 if code < 32 else BLOCK2  # a request's body, a response's (a request's Block2 is a size hint)
    for number, start, end in options:
        if number == body_option and end - start <= 3:
            value = int.from_bytes(data[start:end], "big")
            szx = value & 7
            if szx == 7:  # reserved (BERT over TCP only)
                return None
            return number, (value >> 4) << (szx + 4), bool(value & 8), data[payload:]
    return None


def _joined(transfer: _Transfer) -> Iterator[StreamUnit]:
    """One unit per run of consecutive blocks (two or more); a hole starts a new one."""
    run: list[tuple[int, bytes, int, float]] = []
    for offset in sorted(transfer.blocks):
        payload, frame, time = transfer.blocks[offset]
        if run and run[-1][0] + len(run[-1][1]) != offset:
            yield from _unit(transfer, run)
            run = []
        run.append((offset, payload, frame, time))
    yield from _unit(transfer, run)


def _unit(transfer: _Transfer, run: list[tuple[int, bytes, int, float]]) -> Iterator[StreamUnit]:
    if len(run) < 2:  # a single block was analysed as its datagram already
        return
    first = run[0][0]
    yield StreamUnit(transfer.flow, transfer.from_client, b"".join(payload for _, payload, _, _ in run),
                     [offset - first for offset, _, _, _ in run], [frame for _, _, frame, _ in run],
                     [time for _, _, _, time in run], gap_before=first > 0, stream_offset=first,
                     app=transfer.app, location=Encoding.COAP_PAYLOAD)
