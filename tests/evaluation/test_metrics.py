"""Metrics for Chinese text (r1_sft/evaluation/metrics.py), against values worked out by hand."""
import random

import pytest

from r1_sft.answer_reader import extract_choice
from r1_sft.evaluation.metrics import (
    bleu4,
    lcs_length,
    mcq_sample_metrics,
    repetition,
    rouge_f1,
    sample_metrics,
    spread,
    summarize,
    text_scores,
    words,
)

ALL_SCORES = ("rouge1", "rouge2", "rougeL", "bleu4")


def test_identical_chinese_strings_score_one():
    # rouge_score's default tokenizer deletes Chinese characters and scores this 0 (shared FACTS).
    text = "高血压患者应当限制食盐摄入，每天不超过五克，并坚持规律运动。"
    assert text_scores(text, text) == {k: pytest.approx(1.0) for k in ALL_SCORES}


def test_disjoint_chinese_strings_score_zero():
    assert text_scores("阿司匹林", "糖尿病饮食") == {k: 0.0 for k in ALL_SCORES}


def test_answers_sharing_only_punctuation_score_zero_rouge():
    # jieba keeps "，" and "。" as words; counted, they gave ROUGE-1 and ROUGE-L 0.14 here (issue 13).
    a, b = "今天天晴，适合去公园散步。", "高血压患者应低盐饮食。"
    assert "。" not in words(a) and "，" not in words(a)
    scores = text_scores(a, b)
    assert (scores["rouge1"], scores["rouge2"], scores["rougeL"]) == (0.0, 0.0, 0.0)
    # symbols go too, numbers stay: "≥" and "℃" are not words, "38" is
    assert words("体温≥38℃") == ["体温", "38"]
    assert text_scores("多喝水！", "多喝水。")["rouge1"] == pytest.approx(1.0)  # same words, other punctuation


def test_numbered_lists_with_different_chinese_text_score_well_below_one():
    # rouge_score's default tokenizer keeps only the digits here and scores 1.0.
    a = "1. 每天食盐不超过5克。\n2. 多吃新鲜蔬菜和水果。\n3. 限制饮酒，戒烟。"
    b = "1. 保持规律作息时间。\n2. 睡前避免喝咖啡。\n3. 长期失眠要就诊。"
    scores = text_scores(a, b)
    assert scores["rouge1"] < 0.5 and scores["rouge2"] < 0.3 and scores["rougeL"] < 0.5
    assert scores["bleu4"] < 0.15


def test_partial_overlap_hand_computed():
    """jieba: hyp 高血压|患者|应低|盐|饮食 (5 words), ref 高血压|患者|要|低|盐|低脂|饮食 (7 words).

    ROUGE-1: shared 高血压 患者 盐 饮食 = 4 -> F1 = 2*4/(5+7) = 2/3.
    ROUGE-2: hyp bigrams 4, ref bigrams 6, shared (高血压,患者) = 1 -> 2*1/(4+6) = 0.2.
    ROUGE-L: LCS 高血压 患者 盐 饮食 = 4 -> 2/3.
    BLEU-4 on characters, hyp 10 chars, ref 12: matches 1-gram 9/10, 2-gram 6/9 (高血 血压 压患 患者 低盐
    饮食), 3-gram 3/8 (高血压 血压患 压患者), 4-gram 2/7 (高血压患 血压患者); brevity penalty exp(1 - 12/10).
    """
    hyp, ref = "高血压患者应低盐饮食", "高血压患者要低盐低脂饮食"
    assert words(hyp) == ["高血压", "患者", "应低", "盐", "饮食"]
    assert words(ref) == ["高血压", "患者", "要", "低", "盐", "低脂", "饮食"]
    scores = text_scores(hyp, ref)
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(0.2)
    assert scores["rougeL"] == pytest.approx(2 / 3)
    import math
    expected_bleu = math.exp(1 - 12 / 10) * (9 / 10 * 6 / 9 * 3 / 8 * 2 / 7) ** 0.25
    assert scores["bleu4"] == pytest.approx(expected_bleu)  # 0.4123


def test_bleu_smoothing_hand_computed():
    """高血压患者 vs 高血压病人: 1-gram 3/5, 2-gram 2/4, 3-gram 1/3, 4-gram 0/2 -> smoothed ("exp",
    NLTK method3) to 1/(2*2); equal lengths, no brevity penalty: (0.6*0.5*(1/3)*0.25)^(1/4) = 0.3976."""
    assert bleu4("高血压患者", "高血压病人") == pytest.approx((0.6 * 0.5 / 3 * 0.25) ** 0.25)


def test_rouge_counts_repeated_words_clipped():
    """hyp 多 喝水 多 多, ref 多 喝水: unigram overlap min(3,1) + 1 = 2 -> 2*2/(4+2) = 2/3 (a set-based
    ROUGE would say precision 1 and reward the repetition)."""
    assert rouge_f1(["多", "喝水", "多", "多"], ["多", "喝水"])["rouge1"] == pytest.approx(2 / 3)


def test_empty_text_scores_zero_even_when_both_are_empty():
    assert text_scores("", "多喝水，注意休息。") == {k: 0.0 for k in ALL_SCORES}
    assert text_scores("多喝水，注意休息。", "") == {k: 0.0 for k in ALL_SCORES}
    assert text_scores("", "") == {k: 0.0 for k in ALL_SCORES}
    assert text_scores("  \n", "  ") == {k: 0.0 for k in ALL_SCORES}


def test_rouge_matches_the_rouge_package_multiset_definition():
    """Same numbers as pltrdy/rouge with exclusive=False on one sentence (our definition is theirs)."""
    from rouge.rouge_score import rouge_l_summary_level, rouge_n

    pairs = [("患者出现发热、咳嗽，建议多喝水多休息，必要时就医。", "发热咳嗽的患者应多休息多喝水，高热不退时就医。"),
             ("先考虑病毒感染，再考虑细菌感染。病毒感染不用抗生素。", "病毒感染不需要抗生素，细菌感染才需要。"),
             ("血压 血压 血压 偏高", "血压 偏高 需要 复查 血压")]
    for hyp, ref in pairs:
        h, r = words(hyp), words(ref)
        ours = rouge_f1(h, r)
        for n in (1, 2):
            raw = rouge_n([" ".join(h)], [" ".join(r)], n, raw_results=True, exclusive=False)
            assert ours[f"rouge{n}"] == pytest.approx(2 * raw["overlap"] / (raw["hyp"] + raw["ref"]))
        raw = rouge_l_summary_level([" ".join(h)], [" ".join(r)], raw_results=True, exclusive=False)
        assert ours["rougeL"] == pytest.approx(2 * raw["overlap"] / (raw["hyp"] + raw["ref"]))


def _lcs_dp(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("甲乙丙丁戊") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("甲乙丙丁戊") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_long_outputs_score_without_recursion_limits():
    # A full R1 output has thousands of words; pltrdy/rouge's ROUGE-L recursion fails on such texts.
    text = "患者发热三天，伴有咳嗽和乏力，考虑上呼吸道感染。" * 300
    assert text_scores(text, text)["rougeL"] == pytest.approx(1.0)


def test_repetition_share_of_repeated_character_4grams():
    # 头痛头痛头痛: 4-grams 头痛头痛, 痛头痛头, 头痛头痛 -> 3 in all, 2 distinct -> 1 - 2/3.
    assert repetition("头痛头痛头痛") == pytest.approx(1 / 3)
    assert repetition("多喝水，注意休息") == 0.0
    assert repetition("头痛") == 0.0
    assert repetition("头 痛\n头痛头痛") == pytest.approx(1 / 3)  # whitespace ignored


def test_sample_metrics_of_generated_text_without_opening_think():
    reference = "<think>\n考虑病毒感染。\n</think>\n\n多喝水，注意休息，高热不退请就医。"
    good = sample_metrics("考虑病毒感染。\n</think>\n\n多喝水，注意休息，高热不退请就医。", reference, True, 20)
    assert good["answer"] == {k: pytest.approx(1.0) for k in ALL_SCORES}
    assert good["full"]["rouge1"] == pytest.approx(1.0)  # tags are not part of the compared text
    assert good["format"] == {"think_closed": 1.0, "answer_nonempty": 1.0, "eos": 1.0}
    assert good["outcome"] == "answered"

    cut = sample_metrics("考虑病毒感染。多喝水，注意休息", reference, False, 64)
    assert cut["answer"] == {k: 0.0 for k in ALL_SCORES}  # unclosed think: no answer
    assert cut["full"]["rouge1"] > 0.3  # but the reasoning still overlaps
    assert cut["format"] == {"think_closed": 0.0, "answer_nonempty": 0.0, "eos": 0.0}
    assert cut["outcome"] == "cut_off"
    stopped = sample_metrics("考虑病毒感染。", reference, True, 5)  # EOS inside the think block
    assert stopped["outcome"] == "stopped_without_answer"
    assert sample_metrics("想\n</think>\n\n", reference, True, 5)["outcome"] == "stopped_without_answer"  # empty answer


def test_plain_text_reference_is_all_answer():
    scores = sample_metrics("想一想。\n</think>\n\n多喝水，注意休息。", "多喝水，注意休息。")
    assert scores["answer"]["rouge1"] == pytest.approx(1.0)
    assert scores["format"]["eos"] is None  # unknown when scoring a file without stopped_by_eos


EXISTING_KEYS = {"answer", "full", "format", "repetition", "tokens_per_s", "n"}  # people script against them


def test_summary_block_has_the_issue_keys_and_means():
    ref = "<think>\n想\n</think>\n\n多喝水，注意休息。"
    samples = [sample_metrics("想\n</think>\n\n多喝水，注意休息。", ref, True, 10),
               sample_metrics("想想想想想想", ref, False, 64)]
    block = summarize(samples, tokens_per_s=12.5)
    assert EXISTING_KEYS <= set(block) and {"outcome", "over_answered"} <= set(block)
    assert set(block["answer"]) == set(block["full"]) == set(ALL_SCORES)
    assert set(block["format"]) == {"think_closed", "answer_nonempty", "eos"}
    assert block["format"]["think_closed"] == 0.5 and block["format"]["eos"] == 0.5
    assert block["answer"]["rouge1"] == pytest.approx(0.5)  # over all: the cut-off output scores 0
    assert block["over_answered"]["answer"]["rouge1"] == pytest.approx(1.0)  # over the one answered output
    assert block["over_answered"]["n"] == 1
    assert block["outcome"] == {"answered": 0.5, "cut_off": 0.5, "stopped_without_answer": 0.0}
    assert block["n"] == 2 and block["tokens_per_s"] == 12.5


def test_outcome_rates_sum_to_one_and_are_unknown_without_the_stop_reason():
    ref = "多喝水。"
    outputs = [("想\n</think>\n\n多喝水。", True), ("想", False), ("想", True), ("想\n</think>\n\n多", False)]
    block = summarize([sample_metrics(p, ref, eos, 3) for p, eos in outputs])
    assert block["outcome"] == {"answered": 0.5, "cut_off": 0.25, "stopped_without_answer": 0.25}
    unknown = summarize([sample_metrics(p, ref) for p, _ in outputs])  # a scored file without stopped_by_eos
    assert unknown["outcome"] == {"answered": 0.5, "cut_off": None, "stopped_without_answer": None}


def test_spread_is_the_standard_deviation_across_sample_runs():
    ref = "多喝水。"
    good, bad = sample_metrics("想\n</think>\n\n多喝水。", ref, True, 3), sample_metrics("想", ref, False, 3)
    runs = [summarize([good, good]), summarize([good, bad]), summarize([bad, bad])]  # rouge1 1, 0.5, 0
    sd = spread(runs)
    assert sd["answer"]["rouge1"] == pytest.approx(0.5)  # stdev of (1, 0.5, 0)
    assert sd["outcome"]["answered"] == pytest.approx(0.5)
    assert spread(runs[:1]) is None  # one run: no spread


def test_extract_choice_without_options_reads_letters_only():
    assert extract_choice("答案：B") == "B"
    assert extract_choice("逐项分析后可知：\n\nC. 肌红蛋白") == "C"  # the only stand-alone letter
    assert extract_choice("答案：F", "ABCDEF") == "F"  # more options than five
    assert extract_choice("答案：F") == ""  # not an option


def test_mcq_choice_is_read_only_after_think():
    # "A" in the reasoning must not count; the model never closed the think block -> no choice.
    assert mcq_sample_metrics("先排除A，答案是B", "B")["correct"] == 0.0
    scored = mcq_sample_metrics("先排除A。\n</think>\n\n答案：B、D", "DB", True, 9)
    assert scored["choice"] == "BD" and scored["correct"] == 1.0 and scored["multi"] is True
    assert summarize([scored])["accuracy"] == 1.0


def test_multi_answer_questions_are_exact_sets_and_reported_apart():
    outputs = [("想\n</think>\n\n答案：A、B、D", "ABD", True),   # exact set: right
               ("想\n</think>\n\n答案：AB", "ABD", True),       # a subset is wrong
               ("想\n</think>\n\n答案：ABCD", "ABD", True),     # a superset is wrong
               ("想\n</think>\n\n答案：C", "C", True),
               ("想", "B", False)]                                   # cut off: wrong, not answered
    samples = [mcq_sample_metrics(p, gold, eos, 5) for p, gold, eos in outputs]
    for s, group in zip(samples, ["内科", "内科", "外科", "外科", "外科"]):
        s["group"] = group
    block = summarize(samples)
    assert block["accuracy"] == pytest.approx(2 / 5)
    assert (block["accuracy_multi"], block["n_multi"]) == (pytest.approx(1 / 3), 3)
    assert (block["accuracy_single"], block["n_single"]) == (pytest.approx(1 / 2), 2)
    assert block["over_answered"] == {"accuracy": pytest.approx(2 / 4), "n": 4}
    assert block["groups"] == {"内科": {"accuracy": 0.5, "n": 2}, "外科": {"accuracy": pytest.approx(1 / 3), "n": 3}}
    # a declared question type wins over the number of gold letters
    assert mcq_sample_metrics("想\n</think>\n\n答案：C", "C", multi=True)["multi"] is True
