"""Stand-ins for neuronx_distributed and torch_xla, which cannot be installed here (they need the Neuron SDK's
torch-neuronx build of torch 2.8 and Trainium), so that the real optimum-neuron 0.4.5 package imports.

Exactly the names optimum-neuron 0.4.5 imports on the way to `optimum-cli neuron consolidate` (found by
importing optimum.neuron.models.training with a recording finder), nothing more: a name missing here fails the
import with AttributeError/ImportError, so the list cannot silently drift. Every stand-in function raises when
called, and the classes have no behaviour: the consolidation path must not use any of them (it reads the shards
with torch.load and reassembles them with optimum's own transformations_utils), and the test proves it does not.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any

CLASSES = "class"
FUNCTIONS = "function"
MODULES = "module"

NAMES: dict[str, dict[str, str]] = {
    "neuronx_distributed": {},
    "neuronx_distributed.kernels": {},
    "neuronx_distributed.kernels.flash_attn": {"nki_flash_attn_func": FUNCTIONS},
    "neuronx_distributed.modules": {},
    "neuronx_distributed.modules.qkv_linear": {"GQAQKVColumnParallelLinear": CLASSES},
    "neuronx_distributed.parallel_layers": {"parallel_state": MODULES},
    "neuronx_distributed.parallel_layers.layers": {
        "BaseParallelLinear": CLASSES, "ColumnParallelLinear": CLASSES, "ParallelEmbedding": CLASSES,
        "RowParallelLinear": CLASSES, "create_local_weight": FUNCTIONS},
    "neuronx_distributed.parallel_layers.mappings": {
        "gather_from_sequence_parallel_region": FUNCTIONS, "scatter_to_sequence_parallel_region": FUNCTIONS},
    "neuronx_distributed.parallel_layers.parallel_state": {
        "get_data_parallel_rank": FUNCTIONS, "get_pipeline_model_parallel_rank": FUNCTIONS,
        "get_pipeline_model_parallel_size": FUNCTIONS, "get_tensor_model_parallel_group": FUNCTIONS,
        "get_tensor_model_parallel_rank": FUNCTIONS, "get_tensor_model_parallel_size": FUNCTIONS},
    "neuronx_distributed.parallel_layers.utils": {
        "EmbeddingUtility": CLASSES, "get_local_world_size": FUNCTIONS, "move_model_to_device": FUNCTIONS},
    "neuronx_distributed.pipeline": {"NxDPPModel": CLASSES},
    "neuronx_distributed.pipeline.trace": {"HFTracerWrapper": CLASSES, "NxDTracer": CLASSES, "trace_model": FUNCTIONS},
    "torch_xla": {},
    "torch_xla.core": {},
    "torch_xla.core.xla_model": {},
    "torch_xla.distributed": {},
    "torch_xla.distributed.parallel_loader": {"MpDeviceLoader": CLASSES},
    "torch_xla.distributed.xla_backend": {},
    "torch_xla.distributed.xla_multiprocessing": {},
    "torch_xla.runtime": {},
    "torch_xla.utils": {},
    "torch_xla.utils.checkpoint": {"checkpoint": FUNCTIONS},
}


class StandinCalled(RuntimeError):
    pass


def _function(qualified: str) -> Any:
    def standin(*args: Any, **kwargs: Any) -> Any:
        raise StandinCalled(f"stand-in {qualified} was called: the real one needs Trainium")

    standin.__qualname__ = qualified
    return standin


def install() -> None:
    """Put the stand-in modules into sys.modules (before optimum.neuron is imported)."""
    for name in NAMES:  # parents first: NAMES lists every package before its submodules
        module = types.ModuleType(name, "stand-in (tests/stages/neuron_standin.py)")
        module.__path__ = []  # a package, so `import a.b.c` works
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = module
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, module)
    for name, members in NAMES.items():
        for member, kind in members.items():
            if kind == MODULES:
                continue  # a submodule, set above
            value = type(member, (), {}) if kind == CLASSES else _function(f"{name}.{member}")
            setattr(sys.modules[name], member, value)
