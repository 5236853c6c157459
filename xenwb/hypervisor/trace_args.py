"""What the trace keeps of a hypercall's arguments, and when it decodes them.

A decoder of the hypercall table (hypercall_table.py) that reads guest memory or state must
run at the call, before the handler changes what it reads: `capturers` run it then,
and the record keeps its result. A decoder that reads nothing but the argument registers
and the guest's geometry (its width and paging mode, fixed for the domain's life) gives the
same result whenever it runs: it has no capturer, and the trace's formatter runs it
(`decode_later`, bound to the domain's geometry) only if somebody reads the event: a
trace file being written, a plugin command showing it.

Which decoders read nothing is found from their code: a decoder whose vcpu parameter
appears in no instruction cannot reach the guest through it, and one that takes the
geometry (`geo`, a frozen value) instead of a vcpu has nothing else to read.
"""

from __future__ import annotations

import dis
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xenwb.hypervisor.hypercall_table import TABLE, decode_args, takes_geometry, undecodable
from xenwb.trace_events import Packed, Volatile, packed

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.hypervisor.xenarea import HvGeometry


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
    unless provably not: a plain function whose first parameter no instruction uses, or
    that takes the geometry."""
    code = getattr(fn, "__code__", None)
    if code is None or hasattr(fn, "__wrapped__") or not code.co_argcount:
        return True
    return not takes_geometry(fn) and _uses(code, code.co_varnames[0])


def args_used(fn: Callable[..., Any]) -> int:
    """How many argument registers a decoder's result can depend on: its named positional
    parameters after the vcpu (or geometry), or all five if it reads its `*rest`."""
    code = fn.__code__
    if code.co_flags & inspect.CO_VARARGS and _uses(code, code.co_varnames[code.co_argcount
                                                                            + code.co_kwonlyargcount]):
        return 5
    return min(5, code.co_argcount - 1)


@functools.cache
def decoded_at_call(word: int) -> frozenset[int]:
    """The hypercalls of a guest of this word size decoded at the call: those whose decoder
    for that width reads the guest."""
    return frozenset(nr for nr, e in TABLE.items()
                     if (d := e.decoder_for(word)[0]) is not None and reads_guest(d))


@functools.cache
def later_width(word: int) -> dict[int, int]:
    """Hypercall number -> the registers its late decoding depends on (the trace memoizes by
    them), for the calls of a guest of this word size decoded when read."""
    at_call = decoded_at_call(word)
    return {nr: args_used(d) for nr, e in TABLE.items()
            if (d := e.decoder_for(word)[0]) is not None and nr not in at_call}


def capturers(word: int) -> dict[int, Callable[[Vcpu, tuple[int, ...]], Packed]]:
    """Hypercall number -> capture(vcpu, args): the arguments decoded at the call and kept
    encoded (Packed), for the calls of a guest of this word size whose decoder reads the
    guest (the domain looks each call up once: nothing to decide per call)."""
    out = {}
    for nr in decoded_at_call(word):
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


def decode_later(geo: HvGeometry, nr: int, args: tuple[int, ...]) -> Any:
    """The decoded arguments of a call whose decoder reads only its registers (the first
    later_width[nr] of them: a decoding that failed shows all five, so it is Volatile) and
    the guest's geometry. The domain binds geo (functools.partial)."""
    out = decode_args(None, nr, args, geo)
    if isinstance(out, dict) and "undecodable" in out:
        return Volatile(out)
    return out
