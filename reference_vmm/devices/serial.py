"""A 16550A UART reduced to what a polled console needs (COM1 at 0x3f8).

Transmit only: a byte written to THR goes to the output at once (the line
status always says "transmitter empty"), so guest output reaches stdout
unchanged.  No interrupts are raised; receive is always empty.
"""

from __future__ import annotations

from collections.abc import Callable

from ..memory.owner import Owner
from ..memory.region import MemoryRegion

__all__ = ["Serial16550"]

_THR, _IER, _IIR, _LCR, _MCR, _LSR, _MSR, _SCR = range(8)
_LCR_DLAB = 0x80
_LSR_THRE_TEMT = 0x60
_MSR_CTS_DSR_DCD = 0xB0
_IIR_NO_INT = 0x01


class Serial16550(Owner):
    """``serial``: 8 byte-wide registers; ``out`` receives every transmitted byte.

    The region keeps global locking: every register access runs under the
    BQL, so ``regs`` and ``divisor`` are never changed by two vCPUs at once.
    """

    def __init__(self, out: Callable[[bytes], None], name: str = "serial") -> None:
        super().__init__(name)
        self._out = out
        self.regs = bytearray(8)
        self.divisor = 12  # 9600 baud, the reset value
        self.region = MemoryRegion.io(self, name, 8, self.read, self.write)

    def read(self, offset: int, size: int) -> int:
        dlab = self.regs[_LCR] & _LCR_DLAB
        if offset == _THR:
            return self.divisor & 0xFF if dlab else 0  # RBR: nothing received
        if offset == _IER:
            return self.divisor >> 8 if dlab else self.regs[_IER]
        if offset == _IIR:
            return _IIR_NO_INT
        if offset == _LSR:
            return _LSR_THRE_TEMT
        if offset == _MSR:
            return _MSR_CTS_DSR_DCD
        return self.regs[offset]

    def write(self, offset: int, value: int, size: int) -> None:
        value &= 0xFF
        dlab = self.regs[_LCR] & _LCR_DLAB
        if offset == _THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._out(bytes((value,)))
        elif offset == _IER and dlab:
            self.divisor = (self.divisor & 0xFF) | (value << 8)
        elif offset in (_IER, _LCR, _MCR, _SCR):
            self.regs[offset] = value
        # FCR (offset 2) and the read-only LSR/MSR: writes have no effect here
