"""Shared by the reference sides of `cargo rmlx bench` (bench_mlx_lm.py, bench_llama_cpp.py)."""
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
