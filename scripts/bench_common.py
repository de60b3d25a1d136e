"""Shared by the reference sides of `cargo rmlx bench` (bench_mlx_lm.py, bench_llama_cpp.py)
and the mlx-lm oracle (oracle_mlx_lm.py)."""
import resource


def peak_rss_mib():
    """This program's peak RSS: VmHWM, which starts afresh at exec. (ru_maxrss does not: on
    Linux a child keeps the high-water mark of the parent that forked it.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def patch_gather_qmm():
    """mlx-lm 0.32.2's quantized expert layers (QuantizedSwitchLinear) always pass
    `global_scale=self.global_scale` to `mx.gather_qmm`, which is None unless the checkpoint
    has global scales; mlx 0.32.2's `gather_qmm` has no such keyword and rejects the call,
    so every quantized MoE model crashes. Drop the keyword when it is None (it means "no
    global scale", the only thing mlx 0.32.2 can do); any other value is passed on and
    fails as before. Dense and non-MoE models never call gather_qmm."""
    import mlx.core as mx  # only the mlx-lm side has mlx

    original = mx.gather_qmm

    def gather_qmm(*args, global_scale=None, **kwargs):
        if global_scale is not None:
            kwargs["global_scale"] = global_scale
        return original(*args, **kwargs)

    mx.gather_qmm = gather_qmm
