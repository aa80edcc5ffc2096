"""A draining SIP worker answers OPTIONS with 503, so proxies in front stop sending it calls.

PJSUA answers every out-of-dialog OPTIONS with 200 itself (its ``mod-pjsua-options``), and
PJSUA2 has no hook for it. The pjsua2 wheel exports PJSIP's C API, so this module registers
a small PJSIP module of its own through ctypes, one priority ahead of PJSUA's: while the
worker drains it answers OPTIONS with 503 (statelessly, as PJSUA does at shutdown) and lets
everything else through. In-dialog requests never reach it (the dialog layer takes them
first). New INVITEs are refused by the endpoint itself (``SipEndpoint.on_incoming``).

Everything here runs on the PJSIP thread: :meth:`ServiceAvailability.register` is called
from it, and PJSIP calls the module's callback from it.
"""

from __future__ import annotations

import ctypes
import logging

import pjsua2

log = logging.getLogger(__name__)

PJSIP_MOD_PRIORITY_APPLICATION = 64
"""PJSUA's OPTIONS module runs at this priority; lower numbers run first."""
SERVICE_UNAVAILABLE = 503
PJ_SUCCESS = 0
_OPTIONS_INFO = b"Request msg OPTIONS/"
"""How ``pjsip_rx_data_get_info`` names an OPTIONS request ("Request msg OPTIONS/cseq=…")."""


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


_ON_RX = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _PjsipModule(ctypes.Structure):
    """``struct pjsip_module`` (pjsip/sip_module.h)."""

    _fields_ = [
        ("prev", ctypes.c_void_p), ("next", ctypes.c_void_p),
        ("name", _PjStr), ("id", ctypes.c_int), ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p), ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p), ("unload", ctypes.c_void_p),
        ("on_rx_request", _ON_RX), ("on_rx_response", ctypes.c_void_p),
        ("on_tx_request", ctypes.c_void_p), ("on_tx_response", ctypes.c_void_p),
        ("on_tsx_state", ctypes.c_void_p),
    ]


def _pjsip() -> ctypes.CDLL:
    """The PJSIP inside the loaded pjsua2 extension (the same library, not a second copy)."""
    lib = ctypes.CDLL(pjsua2._pjsua2.__file__)
    lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
    lib.pjsua_get_pjsip_endpt.argtypes = []
    lib.pjsip_endpt_register_module.restype = ctypes.c_int
    lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.pjsip_rx_data_get_info.restype = ctypes.c_char_p
    lib.pjsip_rx_data_get_info.argtypes = [ctypes.c_void_p]
    lib.pjsip_endpt_respond_stateless.restype = ctypes.c_int
    lib.pjsip_endpt_respond_stateless.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


class ServiceAvailability:
    """Whether the worker takes new calls; when it does not, OPTIONS are answered 503."""

    NAME = b"mod-switchboard-availability"

    def __init__(self) -> None:
        self.draining = False
        self._lib: ctypes.CDLL | None = None
        self._callback = _ON_RX(self._on_rx_request)  # kept: PJSIP holds its address
        self._name = ctypes.create_string_buffer(self.NAME)
        self._module = _PjsipModule(
            name=_PjStr(ctypes.cast(self._name, ctypes.c_char_p), len(self.NAME)),
            id=-1, priority=PJSIP_MOD_PRIORITY_APPLICATION - 1,
            on_rx_request=self._callback,
        )

    def register(self) -> bool:
        """Add the module to the running PJSIP endpoint (after ``libStart``). Without it
        the worker still refuses new calls while draining, but answers OPTIONS 200."""
        try:
            lib = _pjsip()
            status = lib.pjsip_endpt_register_module(lib.pjsua_get_pjsip_endpt(),
                                                     ctypes.byref(self._module))
        except (OSError, AttributeError) as exc:
            log.warning("cannot answer OPTIONS with 503 while draining: %s", exc)
            return False
        if status != PJ_SUCCESS:
            log.warning("cannot answer OPTIONS with 503 while draining: PJSIP status %d",
                        status)
            return False
        self._lib = lib
        return True

    def _on_rx_request(self, rdata: int | None) -> int:
        lib = self._lib
        if not self.draining or lib is None or not rdata:
            return 0
        try:
            info = lib.pjsip_rx_data_get_info(rdata) or b""
            if not info.startswith(_OPTIONS_INFO):
                return 0
            lib.pjsip_endpt_respond_stateless(lib.pjsua_get_pjsip_endpt(), rdata,
                                              SERVICE_UNAVAILABLE, None, None, None)
        except Exception:  # never let an exception cross into C
            log.exception("answering OPTIONS while draining failed")
            return 0
        return 1
