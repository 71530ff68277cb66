"""Reading the chosen option letters out of a model's multiple-choice answer, for Chinese medical text.

Medical Chinese is full of Latin letters that are not choices: B超, 维生素C, X线, CT, A型血, T细胞,
C反应蛋白, Child-Pugh C级, and 选择 is also an ordinary verb (建议患者选择B超复查). So a letter counts
only when it stands alone -- no Latin letter or digit next to it, not after 维生素, not followed by a
term suffix such as 超/型/细胞/级 (``_TERM_AFTER``) -- and only in a place where an answer is stated.
The places, strongest first; within one kind the last one wins (models revise themselves):

1. an answer statement: ``答案：B``, ``正确答案是 A、C``, ``答案为**D**``, ``\\boxed{C}``, ``答案：b``,
   ``The answer is C``;
1b. a list of verdicts: ``A正确，B错误，C正确`` or one option per line ``B. 正确`` -> the options judged right;
2. a choice phrase: ``故选B``, ``应选 ABD``, ``正确的是A、C``, ``B项正确``, ``诊断为E``
   (not ``不选A``, not ``选项A错误``);
3. bold letters: ``**C**``, ``**C. 肌红蛋白**``;
4. a final standalone choice: the last line is only the letters, or a letter and its option text;
5. otherwise, if the text names exactly one stand-alone letter group, that group.

A letter the text rules out (``不是A``, ``并非B``, ``排除C``, ``A错误``) never counts; ``答案是A或C`` is
ambiguous. Nothing found, or an ambiguous answer, is "" (scored wrong): never a guess. Multiple answers are a set: "ABD" == "DBA".
"""
from __future__ import annotations

import re
from typing import Mapping

# Suffixes that make a letter part of a medical term (B超, A型, T细胞, C肽, C反应蛋白, B族, C级, A群 ...).
_TERM_AFTER = ("超", "型", "族", "细胞", "淋巴", "群", "组", "类", "级", "肽", "反应", "蛋白", "肝", "因子",
               "受体", "链球菌", "波", "端", "线", "字", "形", "段", "区", "点", "病毒", "抗原", "抗体", "值", "模式")
_FULL_WIDTH = str.maketrans("ＡＢＣＤＥＦＧＨａｂｃｄｅｆｇｈ：（）", "ABCDEFGHabcdefgh:()")
# A verdict on one option in a list of judgments ("A正确，B错误", "C. 错误", "D ×"): wrong first (不正确 ends in 正确).
_WRONG = r"(?:不正确|不对|错误|不符合|错|×|✗|✘)"
_RIGHT = r"(?:正确|对|√|✓|✔)"
# Words that make the letter after them one the answer rules out ("不是A", "并非B", "排除C").
_NEGATED_BEFORE = r"(?:不是|并非|并不是|而非|排除|除外|不选|不应选|不考虑|可排除|not)[ \t]*(?:选项)?[ \t]*$"
_NEGATED_AFTER = r"^[ \t]*(?:项|选项)?[ \t]*(?:也|均|都|亦)?[ \t]*(?:说法)?(?:错误|不正确|不对|不符合|可排除|排除|除外|不是|is wrong|is incorrect)"


def _group(letters: str) -> str:
    """A run of stand-alone option letters, e.g. ``B``, ``ABD``, ``A、C``, ``A 和 D``, ``B/C``, ``A, C and D``.

    Not a letter before a lower-case English word ("A patient"), nor inside a term (B超, 维生素C)."""
    letter = f"[{letters}]"
    joint = r"[ \t]*(?:[、,，/和及与&][ \t]*)?(?:and[ \t]+)?"
    return (rf"(?<![A-Za-z0-9-])(?<!维生素)({letter}(?:{joint}{letter})*)"
            rf"(?![A-Za-z0-9/+-]|(?<=A)[ \t]+(?!and\b|or\b)[a-z]|{'|'.join(_TERM_AFTER)})")


def _letters_of(group: str, letters: str) -> str:
    return "".join(sorted(set(re.findall(f"[{letters}]", re.sub(r"\band\b", " ", group).upper()))))


def _negated(text: str, match: re.Match) -> bool:
    """The letters of ``match`` are ruled out by the words around them ("不是A", "A错误", "排除C")."""
    return bool(re.search(_NEGATED_BEFORE, text[max(0, match.start(1) - 8):match.start(1)])
                or re.match(_NEGATED_AFTER, text[match.end(1):match.end(1) + 12]))


def _undecided(text: str, match: re.Match, letters: str) -> bool:
    """``A 或 C``, ``A还是C``, ``A or C``: the answer names alternatives, not a choice."""
    return bool(re.match(rf"[ \t]*(?:或者|或是|或|还是|or)[ \t]*[{letters}{letters.lower()}](?![A-Za-z])",
                         text[match.end(1):match.end(1) + 10]))


def _judged(text: str, letters: str) -> str | None:
    """A list of verdicts on the options ("A正确，B错误，C正确", one option per line "B. 正确"): the
    letters judged right. None unless at least two options are judged (one verdict is a choice phrase)."""
    letter = f"([{letters}])"
    inline = rf"(?<![A-Za-z0-9])(?:选项)?{letter}[ \t]*(?:项|选项)?[ \t]*[.．、:：)）]?[ \t]*(?:说法)?[ \t]*({_WRONG}|{_RIGHT})"
    line_end = rf"(?m)^[ \t*#>-]*(?:选项)?{letter}[ \t]*[.．、:：)）][^\n]*?[，,；;：:。 \t（(]({_WRONG}|正确|√|✓|✔)[ \t。.；;*）)]*$"
    verdicts = {}
    for pattern in (line_end, inline):
        for m in re.finditer(pattern, text):
            verdicts.setdefault(m.group(1), re.fullmatch(_RIGHT, m.group(2)) is not None)
    if len(verdicts) < 2:
        return None
    right = "".join(sorted(k for k, ok in verdicts.items() if ok))
    return right or None


def extract_choice(answer: str, options: Mapping[str, str] | str = "ABCDE") -> str:
    """The option letters an answer states, sorted (e.g. ``"ABD"``); ``""`` when it states none, or when it
    is ambiguous ("A或C", two different choices at the same strength, only letters it rules out).

    ``answer`` is the text after ``</think>`` (the caller parses it). ``options`` is the question's
    ``{"A": text, ...}`` (lets a last line such as ``C. 肌红蛋白`` count) or just the letters.
    """
    option_texts = dict(options) if isinstance(options, Mapping) else {}
    letters = "".join(sorted(option_texts)) if option_texts else options
    text = answer.translate(_FULL_WIDTH)
    g = _group(letters)
    any_case = _group(letters + letters.lower())  # after "答案" / "answer" a lower-case letter is a choice too
    lead = r"[ \t]*[:：]?[\s*（(【\[]*"  # "：", "**", "（" and line breaks between a phrase and its letters
    same_line = r"[ \t]*[:：]?[ \t*（(【\[]*"
    tiers = [
        # 1. answer statements
        [rf"答案[ \t]*(?:应该|应当|应|可能|就|即|当)?[ \t]*(?:是|为|选)?{lead}(?:选项|选)?[ \t]*{any_case}",
         rf"(?i:(?:final|correct|best)?[ \t]*answer)(?:[ \t]+(?:is|would be|should be))?{lead}"
         rf"(?i:(?:option|choice)[ \t]*)?{any_case}",
         rf"\\boxed\{{[ \t]*(?:\\(?:text|mathrm|textbf)\{{)?[ \t]*{any_case}"],
        None,  # 1b. a list of verdicts on the options (_judged)
        # 2. choice phrases (选 as a verb only counts with a stand-alone letter right after it)
        [rf"(?<![不勿别])(?<!不应)(?<!不能)(?<!不该)(?<!不宜)选(?:择|用)?(?!项){lead}{g}",
         rf"(?<!不)正确(?:的)?(?:选项|答案|的是|项)?[ \t]*(?:是|为|有)?{same_line}(?:选项)?[ \t]*{g}",
         rf"{g}[ \t]*(?:项|选项)?[ \t]*(?:正确|是正确的|为正确答案|当选|符合题意|最符合|最合适|最恰当|最佳|最准确)",
         rf"(?:应为|应是|应该是|应该为|就是|即为|而是|而应是|诊断为|诊断是|是选项|为选项|选项为|选项是){lead}{g}",
         rf"(?i:\b(?:I[ \t]+(?:would[ \t]+)?)?(?:choose|pick|select|go[ \t]+with))[ \t]+(?i:option[ \t]+)?{any_case}",
         rf"(?i:\b(?:option|choice)[ \t]+){g}(?i:[ \t]+is[ \t]+(?:the[ \t]+)?(?:correct|right|best))",
         rf"{g}(?i:[ \t]+is[ \t]+(?:the[ \t]+)?(?:correct|right|best)(?![ \t]+(?:about|for)))"],
        # 3. bold letters, alone or with their option text
        [rf"\*\*[ \t]*(?:选项)?[ \t]*{g}[ \t]*(?:[.．、:：)）][^*\n]*)?\*\*"],
    ]
    for patterns in tiers:
        if patterns is None:
            judged = _judged(text, letters)
            if judged:
                return judged
            continue
        hits = [(m.start(1), m) for p in patterns for m in re.finditer(p, text)]
        hits = [(start, m) for start, m in hits if not _negated(text, m)]
        if hits:
            best = max(hits, key=lambda hit: hit[0])[1]
            return "" if _undecided(text, best, letters) else _letters_of(best.group(1), letters)
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
    # 5. exactly one stand-alone letter group in the whole answer, not one it rules out
    groups = {_letters_of(m.group(1), letters) for m in re.finditer(g, text) if not _negated(text, m)}
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
