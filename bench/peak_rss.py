"""Run a script and print its peak resident memory: ``python bench/peak_rss.py SCRIPT [ARGS...]``.

The last line of output is ``PEAK_RSS_KB <kilobytes>`` (``getrusage``'s maximum RSS of this process, the
script's own run included), printed even when the script fails. Used by bench/loss_bench.py and the loss
memory test, so both measure the same way.
"""
import resource
import runpy
import sys

if __name__ == "__main__":
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
