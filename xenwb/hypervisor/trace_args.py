"""What the trace keeps of a hypercall's arguments, and when it decodes them.

A decoder of the hypercall table (hypercall_table.py) that reads guest memory or state must
run at the call, before the handler changes what it reads: `capturers` run it then,
and the record keeps its result. A decoder that reads nothing but the argument registers
(it never touches its vcpu) gives the same result whenever it runs: it has no capturer,
and the trace's formatter runs it (`decode_later`) only if somebody reads the event: a
trace file being written, a plugin command showing it.

Which decoders read nothing is found from their code: a decoder whose vcpu parameter
appears in no instruction cannot reach the guest through it.
"""

from __future__ import annotations

import dis
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xenwb.hypervisor.hypercall_table import TABLE, decode_args, undecodable
from xenwb.trace_events import Packed, Volatile, packed

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu


def _uses(code: Any, name: str) -> bool:
    """Does any instruction of code use the local `name` (or an inner function capture it)?"""
    if name in code.co_cellvars:
        return True
    for ins in dis.get_instructions(code):
        if ins.opname.startswith(("LOAD_FAST", "STORE_FAST", "DELETE_FAST", "LOAD_CLOSURE")):
            used = ins.argval if isinstance(ins.argval, tuple) else (ins.argval,)
            if name in used:
                return True
    return False


def reads_guest(fn: Callable[..., Any]) -> bool:
    """Could this decoder read the guest (or any state) through its first parameter? True
    unless provably not: a plain function whose first parameter no instruction uses."""
    code = getattr(fn, "__code__", None)
    if code is None or hasattr(fn, "__wrapped__") or not code.co_argcount:
        return True
    return _uses(code, code.co_varnames[0])


def args_used(fn: Callable[..., Any]) -> int:
    """How many argument registers a decoder's result can depend on: its named positional
    parameters after the vcpu, or all five if it reads its `*rest`."""
    code = fn.__code__
    if code.co_flags & inspect.CO_VARARGS and _uses(code, code.co_varnames[code.co_argcount
                                                                            + code.co_kwonlyargcount]):
        return 5
    return min(5, code.co_argcount - 1)


# hypercall number -> True: decode at the call; absent: decode when read. A call with a 64-bit
# decoder of its own is decoded at the call too: which decoder applies depends on the vcpu.
_AT_CALL: frozenset[int] = frozenset(nr for nr, e in TABLE.items() if e.decoder is not None
                                     and (reads_guest(e.decoder) or e.decoder64 is not None))


# hypercall number -> the registers a late decoding depends on (the trace memoizes by them)
LATER_WIDTH: dict[int, int] = {nr: args_used(e.decoder) for nr, e in TABLE.items()
                               if e.decoder is not None and nr not in _AT_CALL}


def capturers(word: int) -> dict[int, Callable[[Vcpu, tuple[int, ...]], Packed]]:
    """Hypercall number -> capture(vcpu, args): the arguments decoded at the call and kept
    encoded (Packed), for the calls of a guest of this word size whose decoder reads the
    guest (the domain looks each call up once: nothing to decide per call)."""
    out = {}
    for nr in _AT_CALL:
        decoder, arity = TABLE[nr].decoder_for(word)
        if decoder is not None:
            out[nr] = _capturer(decoder, arity)
    return out


def _capturer(decoder: Callable[..., Any], arity: int) -> Callable[[Vcpu, tuple[int, ...]], Packed]:
    def capture(vcpu: Vcpu, args: tuple[int, ...]) -> Packed:
        try:
            return packed(decoder(vcpu, *args[:arity]))
        except Exception as ex:  # a decoder must never take the machine down (as decode_args)
            return packed(undecodable(ex, args))
    return capture


def decode_later(nr: int, args: tuple[int, ...]) -> Any:
    """The decoded arguments of a call whose decoder reads only its registers (the first
    LATER_WIDTH[nr] of them: a decoding that failed shows all five, so it is Volatile)."""
    out = decode_args(None, nr, args)  # type: ignore[arg-type]   # such a decoder never uses its vcpu
    if isinstance(out, dict) and "undecodable" in out:
        return Volatile(out)
    return out


def decoded_at_call() -> frozenset[int]:
    return _AT_CALL
