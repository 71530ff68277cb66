"""Test-only: lift accelerate 1.15's GPU-only gate on FSDP, so the Trainer's FSDP2 path runs on this CPU.

accelerate's ``AcceleratorState`` turns the FSDP plugin on only for accelerator device types; under
``torchrun`` on a CPU it keeps ``MULTI_CPU`` and the Trainer silently trains plain DDP (which is why
``r1_sft.training.parallel`` refuses ``--fsdp_config`` on a CPU). PyTorch's FSDP2 itself shards over gloo on a
CPU, so this module -- put on PYTHONPATH by tests/training/test_fsdp.py only -- sets the state to FSDP when a
plugin was given (also when the Trainer re-creates the state) and lets ``--fsdp_config`` through
``r1_sft.training.parallel``'s CPU refusal. Everything else is the real script, Trainer, accelerate and torch.
"""
import os

if os.environ.get("R1_SFT_TEST_CPU_FSDP") == "1":
    import accelerate.state as _state
    from accelerate.utils import DistributedType

    _init = _state.AcceleratorState.__init__
    _plugin = {}

    def _init_with_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None:
            _plugin["seen"] = fsdp_plugin
        plugin = fsdp_plugin or _plugin.get("seen")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    _state.AcceleratorState.__init__ = _init_with_cpu_fsdp

    import r1_sft.training.parallel as _parallel

    _parallel._needs_gpu = lambda *args, **kwargs: None
