"""Silence the few library messages that every vgen start printed and that do not concern vgen.

Imported first thing by ``vgen/__init__.py``, so every entry point (the ``vgen`` command,
``python -m vgen.cli``, tools/, tests, library use) passes here before torch, torchao,
diffusers or transformers are imported. Each filter drops one known message from one logger
(or one ``warnings`` category + message + module) and nothing else: other messages of the same
logger, vgen's own warnings and notes, and any new library warning still print. Nothing here
imports a heavy library; a filter on a logger that does not exist yet is kept by ``logging``
and applies once the library creates it under that name.

Found with ``vgen sample --model assets/sd3-tiny-shapes ...`` and ``vgen train
configs/solrl/tiny.yaml ...`` (torch 2.14, torchao 0.18, diffusers 0.42, transformers 5.25);
``tests/test_quiet.py`` checks that the commands start without them.
"""

from __future__ import annotations

import logging

__all__ = ["install"]


class _TorchaoEnumConstant(logging.Filter):
    """Logger ``torch.utils._pytree``: "<enum 'KernelPreference'> is an Enum subclass and is now
    natively supported by torch.compile as an opaque value type. Calling register_constant() on
    Enum subclasses is deprecated and will be an error in a future release." (also for
    ``ScaleCalculationMode``).

    Source: ``import torchao`` (transformers' and diffusers' torchao quantizers import it while a
    pipeline's classes load) registers its own enums ``KernelPreference`` and
    ``ScaleCalculationMode`` with ``torch.utils._pytree.register_constant`` through
    ``torchao.utils.register_as_pytree_constant``; torch >= 2.14 logs that this call is no longer
    needed for enums. It is a note to torchao's developers: the registration still works, vgen
    never calls ``register_constant`` and does not rely on these enums being pytree constants.
    Only records whose class comes from torchao are dropped, so the same deprecation for any
    other package still prints.
    """

    _TEMPLATE = "%s is an Enum subclass and is now natively supported by torch.compile"

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(self._TEMPLATE)):
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        module = getattr(args[0], "__module__", "") if args else ""
        return not (module == "torchao" or module.startswith("torchao."))


class _DiffusersTorchaoSafeGlobals(logging.Filter):
    """Logger ``diffusers.quantizers.torchao.torchao_quantizer``: "Unable to import `torchao`
    Tensor objects. This may affect loading checkpoints serialized with `torchao`".

    Source: on import, diffusers' torchao quantizer adds torchao's tensor subclasses
    (``NF4Tensor``, ``UintxTensor``, ...) to ``torch.serialization``'s safe globals, importing
    them from paths that torchao 0.18 no longer has. The only effect is that a pickled
    ``torch.load(weights_only=True)`` checkpoint holding such torchao tensors could not be read.
    vgen never reads one: models load from safetensors, and vgen's own ``torch.load`` calls
    (checkpoints' plain state, reward and official VAR weights, Inception weights) hold plain
    tensors only; vgen's fp8 / NVFP4 explore copies are quantized in memory, never serialized.
    """

    _PREFIX = "Unable to import `torchao` Tensor objects"

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self._PREFIX))


_FILTERS = (
    ("torch.utils._pytree", _TorchaoEnumConstant),
    ("diffusers.quantizers.torchao.torchao_quantizer", _DiffusersTorchaoSafeGlobals),
)


def install() -> None:
    """Attach each filter to its logger once (idempotent)."""
    for name, cls in _FILTERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


install()
