"""Reading the chosen option letters out of a model's multiple-choice answer, for Chinese medical text.

Medical Chinese is full of Latin letters that are not choices: B超, 维生素C, X线, CT, A型血, T细胞,
C反应蛋白, Child-Pugh C级, and 选择 is also an ordinary verb (建议患者选择B超复查). So a letter counts
only when it stands alone -- no Latin letter or digit next to it, not after 维生素, not followed by a
term suffix such as 超/型/细胞/级 (``_TERM_AFTER``) -- and only in a place where an answer is stated.
The places, strongest first; within one kind the last one wins (models revise themselves):

1. an answer statement: ``答案：B``, ``正确答案是 A、C``, ``答案为**D**``, ``\\boxed{C}``;
2. a choice phrase: ``故选B``, ``应选 ABD``, ``正确的是A、C``, ``B项正确``, ``诊断为E``
   (not ``不选A``, not ``选项A错误``);
3. bold letters: ``**C**``, ``**C. 肌红蛋白**``;
4. a final standalone choice: the last line is only the letters, or a letter and its option text;
5. otherwise, if the text names exactly one stand-alone letter group, that group.

Nothing found is "" (scored wrong). Multiple answers are a set: "ABD" == "DBA".
"""
from __future__ import annotations

import re
from typing import Mapping

# Suffixes that make a letter part of a medical term (B超, A型, T细胞, C肽, C反应蛋白, B族, C级, A群 ...).
_TERM_AFTER = ("超", "型", "族", "细胞", "淋巴", "群", "组", "类", "级", "肽", "反应", "蛋白", "肝", "因子",
               "受体", "链球菌", "波", "端", "线", "字", "形", "段", "区", "点", "病毒", "抗原", "抗体", "值", "模式")
_FULL_WIDTH = str.maketrans("ＡＢＣＤＥＦＧＨ", "ABCDEFGH")


def _group(letters: str) -> str:
    """A run of stand-alone option letters, e.g. ``B``, ``ABD``, ``A、C``, ``A 和 D``, ``B/C``."""
    letter = f"[{letters}]"
    return (rf"(?<![A-Za-z0-9])(?<!维生素)({letter}(?:[ \t]*[、,，/和及与]?[ \t]*{letter})*)"
            rf"(?![A-Za-z0-9/+]|{'|'.join(_TERM_AFTER)})")


def _last(pattern: str, text: str) -> str | None:
    found = list(re.finditer(pattern, text))
    return found[-1].group(1) if found else None


def _letters_of(group: str, letters: str) -> str:
    return "".join(sorted(set(re.findall(f"[{letters}]", group))))


def extract_choice(answer: str, options: Mapping[str, str] | str = "ABCDE") -> str:
    """The option letters an answer states, sorted (e.g. ``"ABD"``); ``""`` when it states none.

    ``answer`` is the text after ``</think>`` (the caller parses it). ``options`` is the question's
    ``{"A": text, ...}`` (lets a last line such as ``C. 肌红蛋白`` count) or just the letters.
    """
    option_texts = dict(options) if isinstance(options, Mapping) else {}
    letters = "".join(sorted(option_texts)) if option_texts else options
    text = answer.translate(_FULL_WIDTH)
    g = _group(letters)
    lead = r"[ \t]*[:：]?[\s*（(【\[]*"  # "：", "**", "（" and line breaks between a phrase and its letters
    tiers = [
        # 1. answer statements
        [rf"答案[ \t]*(?:应该|应当|应|可能|就|即|当)?[ \t]*(?:是|为|选)?{lead}(?:选项|选)?[ \t]*{g}",
         rf"\\boxed\{{[ \t]*(?:\\text\{{)?[ \t]*{g}"],
        # 2. choice phrases (选 as a verb only counts with a stand-alone letter right after it)
        [rf"(?<![不勿别])(?<!不应)(?<!不能)(?<!不该)(?<!不宜)选(?:择|用)?(?!项){lead}{g}",
         rf"(?<!不)正确(?:的)?(?:选项|答案|的是|项)?[ \t]*(?:是|为|有)?{lead}(?:选项)?[ \t]*{g}",
         rf"{g}[ \t]*(?:项|选项)?[ \t]*(?:正确|是正确的|为正确答案|当选|符合题意|最符合|最合适|最恰当|最佳|最准确)",
         rf"(?:应为|应是|应该是|应该为|就是|即为|诊断为|诊断是|是选项|为选项|选项为|选项是){lead}{g}"],
        # 3. bold letters, alone or with their option text
        [rf"\*\*[ \t]*(?:选项)?[ \t]*{g}[ \t]*(?:[.．、:：)）][^*\n]*)?\*\*"],
    ]
    for patterns in tiers:
        hits = [(m.start(1), m.group(1)) for p in patterns for m in re.finditer(p, text)]
        if hits:
            return _letters_of(max(hits)[1], letters)
    # 4. the last line is only the choice (or a letter followed by its own option text)
    lines = [line.strip(" \t*#>-。.") for line in text.strip().splitlines() if line.strip(" \t*#>-。.")]
    if lines:
        last = lines[-1]
        m = re.fullmatch(rf"[（(【\[]?{g}[）)】\]]?", last)
        if m:
            return _letters_of(m.group(1), letters)
        m = re.match(rf"[（(【\[]?{g}[）)】\]]?[ \t]*[.．、:：]?[ \t]*(.+)", last)
        if m and option_texts.get(m.group(1)) and m.group(2).strip(" 。.") == option_texts[m.group(1)].strip(" 。."):
            return m.group(1)
    # 5. exactly one stand-alone letter group in the whole answer
    groups = {_letters_of(m.group(1), letters) for m in re.finditer(g, text)}
    return groups.pop() if len(groups) == 1 else ""


def completion_choice(output: str, options: Mapping[str, str] | str = "ABCDE") -> str:
    """The letters a raw model output states after ``</think>``; ``""`` when its think block never closed
    (an output cut by the token limit has no answer). One definition for evaluation and the GRPO reward."""
    from r1_sft.r1_format import parse_output

    parsed = parse_output(output)
    return extract_choice(parsed.answer, options) if parsed.think_closed else ""


def normalize_gold(answer: str) -> str:
    """Gold letters as a sorted set string: " db" -> "BD"."""
    return "".join(sorted(set(re.sub(r"[\s,，、]", "", answer).upper())))
