"""Benchmark: the data pipeline's wall time and peak memory on synthetic ModelScope records.

For each size, generates that many synthetic records in the ModelScope schema (medical Chinese,
about 1,000 characters each, with the real data's quirks: think ending in a newline, ~3% literal
backslash-n answers, plus ~0.5% bad lines and ~0.5% duplicate questions) in a temporary folder,
then runs convert -> SFT -> split in a fresh child process through the same r1_sft functions the
data scripts call. The child reports each stage's wall time and its peak RSS (ru_maxrss) before
and after the pipeline, so sizes can be compared: memory must not grow with the input.

Reads  nothing. Writes bench/results/data_pipeline.json.

    python bench/data_pipeline.py --sizes 10000,100000
"""
from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.data.conversion import convert_jsonl  # noqa: E402
from r1_sft.data.records import modelscope_record, unified_to_sft  # noqa: E402
from r1_sft.data.splits import split_jsonl  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402


@dataclass
class Config:
    sizes: str = "10000,100000"  # record counts to benchmark, comma-separated
    output: str = "bench/results/data_pipeline.json"  # where the figures go
    max_chars: int = 16000  # same limit as the data scripts' default
    seed: int = 42  # for the synthetic data and the split


PEOPLE = ["我", "我妈妈", "孩子", "老人", "孕妇", "我爸爸", "同事"]
SYMPTOMS = ["反复头痛", "咳嗽", "胸闷", "腹泻", "失眠", "关节疼痛", "皮疹", "血压偏高", "血糖偏高",
            "心慌", "腰痛", "乏力", "食欲下降", "耳鸣", "视物模糊"]
THINK_SENTENCES = [
    "首先需要明确症状的持续时间、严重程度和伴随症状。",
    "要区分常见的良性原因和需要紧急处理的危险信号。",
    "结合年龄、基础疾病和用药史综合判断。",
    "如果伴有发热、体重下降或夜间加重，需要进一步检查。",
    "生活方式因素包括作息、饮食、运动和情绪压力。",
    "体格检查和基本的实验室检查可以帮助缩小范围。",
    "对于慢性症状，需要评估对日常生活的影响。",
    "用药要考虑禁忌证和可能的相互作用。",
]
ANSWER_SENTENCES = [
    "建议先记录症状出现的时间和诱因。",
    "保持规律作息，清淡饮食，适量运动。",
    "如症状持续超过两周或明显加重，请到医院相应科室就诊。",
    "出现胸痛、呼吸困难、意识改变等情况时应立即就医。",
    "请在医生指导下用药，不要自行加量或停药。",
    "定期复查，必要时完善血常规、生化等检查。",
]


def synthetic_lines(n: int, seed: int):
    """The lines of a ModelScope file; a few are bad or duplicates on purpose."""
    rng = random.Random(seed)
    previous = None
    for i in range(n):
        roll = rng.random()
        if roll < 0.005:
            yield json.dumps({"question": f"病例{i}", "think": "想一想\n"}, ensure_ascii=False)  # no answer
            continue
        if roll < 0.01 and previous:
            # The previous question in half-width punctuation: a duplicate after normalisation.
            question = previous.translate(str.maketrans("，？（）", ",?()"))
        else:
            question = f"{rng.choice(PEOPLE)}{rng.choice(SYMPTOMS)}，持续{rng.randint(1, 90)}天，怎么办？（病例{i}）"
        previous = question
        think = "".join(rng.choice(THINK_SENTENCES) for _ in range(rng.randint(10, 40))) + "\n"
        sep = "\\n" if rng.random() < 0.03 else "\n"
        answer = sep.join(rng.choice(ANSWER_SENTENCES) for _ in range(rng.randint(5, 20)))
        yield json.dumps({"instruction": "", "question": question, "think": think, "answer": answer,
                          "metrics": {"quality_f1": round(rng.uniform(0.9, 1.0), 4)}}, ensure_ascii=False)


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pipeline(workdir: str, max_chars: int, seed: int) -> None:
    """Child process: convert -> SFT -> split on workdir/raw.jsonl; reports time and memory.

    Wall seconds depend on what else the machine runs; CPU seconds (user + system) do not.
    ru_maxrss is a running peak, so the value after each stage bounds that stage's memory.
    """
    work = Path(workdir)
    result = {"rss_after_imports_mb": round(peak_rss_mb(), 1), "wall_seconds": {}, "cpu_seconds": {},
              "peak_rss_mb_after": {}, "counts": {}}
    stages = [
        ("convert", lambda: convert_jsonl([work / "raw.jsonl"], functools.partial(
            modelscope_record, max_chars=max_chars), work / "converted.jsonl").as_dict()),
        ("sft", lambda: convert_jsonl([work / "converted.jsonl"], functools.partial(
            unified_to_sft, max_chars=max_chars), work / "sft.jsonl").as_dict()),
        ("split", lambda: split_jsonl(work / "sft.jsonl", work / "split", "train.jsonl", "val.jsonl",
                                      "stats.json", 0.1, seed)),
    ]
    for name, stage in stages:
        wall, cpu = time.perf_counter(), time.process_time()
        counts = stage()
        result["wall_seconds"][name] = round(time.perf_counter() - wall, 2)
        result["cpu_seconds"][name] = round(time.process_time() - cpu, 2)
        result["peak_rss_mb_after"][name] = round(peak_rss_mb(), 1)
        result["counts"][name] = {k: counts[k] for k in ("read", "kept", "rejected", "rejected_by_reason")}
        if name == "split":
            result["counts"][name] |= {s: counts["splits"][s]["records"] for s in ("train", "val")}
    for key in ("wall_seconds", "cpu_seconds"):
        result[key]["total"] = round(sum(result[key].values()), 2)
    (work / "result.json").write_text(json.dumps(result))


def bench_size(n: int, cfg: Config) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        t0 = time.perf_counter()
        with open(Path(tmp) / "raw.jsonl", "w", encoding="utf-8") as fh:
            for line in synthetic_lines(n, cfg.seed):
                fh.write(line + "\n")
        generate_s = time.perf_counter() - t0
        size_mb = (Path(tmp) / "raw.jsonl").stat().st_size / 2**20
        ctx = mp.get_context("spawn")  # a fresh interpreter: its peak RSS is the pipeline's alone
        child = ctx.Process(target=run_pipeline, args=(tmp, cfg.max_chars, cfg.seed))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"benchmark child failed with exit code {child.exitcode}")
        result = json.loads((Path(tmp) / "result.json").read_text())
    return {"records": n, "input_mb": round(size_mb, 1), "generate_seconds": round(generate_s, 2),
            "records_per_cpu_second": round(n / result["cpu_seconds"]["total"]), **result}


@cli_main
def main(cfg: Config):
    sizes = [int(s) for s in cfg.sizes.split(",") if s.strip()]
    load_before = round(os.getloadavg()[0], 2)
    results = []
    for n in sizes:
        print(f"== {n} records", flush=True)
        r = bench_size(n, cfg)
        results.append(r)
        wall, cpu, rss = r["wall_seconds"], r["cpu_seconds"], r["peak_rss_mb_after"]
        print(f"[bench] {n} records ({r['input_mb']} MB): "
              + ", ".join(f"{k} {wall[k]} s wall / {cpu[k]} s CPU / peak RSS {rss[k]} MB"
                          for k in ("convert", "sft", "split"))
              + f"; total {wall['total']} s wall, {cpu['total']} s CPU "
              f"(RSS after imports {r['rss_after_imports_mb']} MB)", flush=True)
    machine = {"cpus": os.cpu_count(), "load_average_1m": [load_before, round(os.getloadavg()[0], 2)],
               "platform": platform.platform(), "python": platform.python_version(),
               "processor": platform.processor() or platform.machine()}
    out = repo_path(cfg.output)
    atomic_write_text(out, json.dumps({"machine": machine, "results": results, "run": run_info(cfg)},
                                      ensure_ascii=False, indent=2, default=str) + "\n")
    print(f"[wrote] {display_path(out)}", flush=True)


if __name__ == "__main__":
    main(parse_config(Config))
