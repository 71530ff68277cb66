"""The multiple-choice answer reader (r1_sft/answer_reader.py): what it reads from answers models really write.

Evaluation scores with it and GRPO rewards with it, so a misread becomes a wrong score and a wrong
training signal. Each case is the text after ``</think>`` and the letters it states; ``""`` means the
reader must return none: nothing is stated, or the reply is ambiguous (the comment says why). Never a guess.
"""
from __future__ import annotations

import pytest

from r1_sft.answer_reader import completion_choice, extract_choice

# Options of the question every case answers: the reader may use them for a last line such as "C. 肌红蛋白".
MCQ_OPTIONS = {"A": "肌酸激酶同工酶（CK-MB）", "B": "心肌肌钙蛋白I", "C": "肌红蛋白", "D": "乳酸脱氢酶",
               "E": "天门冬氨酸氨基转移酶"}
AMBIGUOUS = "ambiguous"  # marks a "" case where the reply names letters but commits to none

MCQ_CASES = [
    # the misreads of issue 26
    ("A. 错误\nB. 正确\nC. 错误\nD. 错误", "B"),  # was C: the line break after 正确 let the next letter count
    ("A正确，B错误，C正确，D正确。", "ACD"),  # was D
    ("答案：b", "B"),  # was none: lower case after 答案
    ("答案不是A，而是C", "C"),  # was none
    ("答案不是A", ""),  # a letter ruled out is no answer
    # lists of verdicts (正确/错误, 对/错, √/×)
    ("A. 肌酸激酶同工酶：升高较晚，错误\nB. 心肌肌钙蛋白I：特异性最高，但不是最早，错误\nC. 肌红蛋白：最早升高，正确\n"
     "D. 乳酸脱氢酶：错误\nE. 天门冬氨酸氨基转移酶：错误", "C"),
    ("A 错误；B 错误；C 正确；D 错误；E 错误。", "C"),
    ("A：√\nB：×\nC：√\nD：×", "AC"),
    ("A对，B错，C对，D错。", "AC"),
    ("选项A：正确\n选项B：不正确\n选项C：正确\n选项D：不正确\n选项E：正确", "ACE"),
    ("A项说法错误，B项说法正确，C项说法错误。", "B"),
    ("A. 正确\nB. 正确\nC. 错误\nD. 正确\nE. 错误", "ABD"),
    ("逐项判断：A错误。B错误。C正确。D错误。E错误。", "C"),
    ("A ×  B ×  C √  D ×  E ×", "C"),
    ("A. 错误\nB. 错误\nC. 错误\nD. 错误", ""),  # every option judged wrong: no answer
    ("A. 错误\nB. 正确\n答案：D", "D"),  # the stated answer wins over the list
    # negations: 不是 / 并非 / 排除 / 除外
    ("答案并非A，应为D。", "D"),
    ("排除A和B后，答案是C。", "C"),
    ("可排除A、B、D，故选C。", "C"),
    ("这里并不是选B，而是选E。", "E"),
    ("正确答案不是C，是D", "D"),
    ("排除A。", ""),  # only a ruled-out letter
    ("并非B。", ""),
    ("A错误。", ""),
    ("不是A也不是B。", ""),
    ("首先排除E，其余选项中肌红蛋白最早升高，答案：C", "C"),
    # lower case and full-width
    ("答案：c", "C"),
    ("答案是 d。", "D"),
    ("正确答案：a、c", "AC"),
    ("答案：ｃ", "C"),  # full-width lower case
    ("答案：Ｂ、Ｄ", "BD"),
    ("故选Ｅ。", "E"),
    ("答案：（Ｃ）", "C"),
    ("最终答案：ｂ", "B"),
    # 多选 forms
    ("答案：ACD", "ACD"),
    ("答案：A、C、D", "ACD"),
    ("答案：A和C", "AC"),
    ("答案：A，C，D", "ACD"),
    ("答案：A,C,E", "ACE"),
    ("正确答案为 A C D", "ACD"),
    ("答案：A/B", "AB"),
    ("本题为多选题，答案是BCE。", "BCE"),
    ("应选A及D。", "AD"),
    ("答案：A与E", "AE"),
    ("多选：正确的是B、C、D。", "BCD"),
    ("答案：DCA", "ACD"),  # a set: order does not matter
    # boxed
    ("\\boxed{D}", "D"),
    ("$$\\boxed{\\text{B}}$$", "B"),
    ("答案为 $\\boxed{A,C}$", "AC"),
    ("\\boxed{\\mathrm{E}}", "E"),
    ("所以最终选择 \\boxed{B}。", "B"),
    ("\\boxed{c}", "C"),
    # revisions: the last answer wins
    ("起初我选A，但重新考虑后，答案是C。", "C"),
    ("答案：B。\n\n更正：答案应为D。", "D"),
    ("先想到B，后来发现B是晚期标志物。故选C。", "C"),
    # English
    ("The answer is C.", "C"),
    ("Answer: B", "B"),
    ("The correct answer is (D).", "D"),
    ("Final answer: A", "A"),
    ("answer: e", "E"),
    ("I choose C because myoglobin rises first.", "C"),
    ("Option B is correct.", "B"),
    ("The best answer is **C**.", "C"),
    ("C is correct: myoglobin is released earliest.", "C"),
    ("The answers are A, C and D.", "ACD"),
    ("Answer: A and C", "AC"),
    ("A patient with chest pain should be evaluated promptly.", ""),  # the article "A", not a choice
    ("The answer is A or C.", ""),  # ambiguous
    ("I am not sure about this question.", ""),
    ("It is not A; the answer is D.", "D"),
    # ambiguous: names letters, commits to none
    ("答案是A或C。", ""),  # ambiguous
    ("答案：B或者D", ""),  # ambiguous
    ("可能是A，也可能是C。", ""),  # ambiguous
    ("A还是C，难以确定。", ""),  # ambiguous
    # earlier table
    # stated answers
    ("答案：C", "C"),
    ("正确答案是 A、C。", "AC"),
    ("答案为ABD", "ABD"),
    ("答案：Ｃ", "C"),  # full-width letter
    ("答案：（C）", "C"),
    ("参考答案：B、D", "BD"),
    ("**答案：C**", "C"),
    ("综上所述，答案是：\n\n**C. 肌红蛋白**", "C"),
    ("最终答案：$\\boxed{C}$", "C"),
    ("$\\boxed{ABD}$", "ABD"),
    ("答案选D，即乳酸脱氢酶。", "D"),
    ("答案不是A。最终答案：C", "C"),
    ("初步考虑A，但A的升高时间不符，修正后答案应为C。", "C"),
    ("根据指南，答案应为 D。选项A不对。", "D"),
    ("选项A错误，选项B正确。答案：**B**", "B"),
    # choice phrases
    ("我选择 C，因为肌红蛋白分子量小，最早释放入血。", "C"),
    ("A项不对，所以选B", "B"),
    ("故选C。", "C"),
    ("本题应选 A、B、D。", "ABD"),
    ("正确的是A和C。", "AC"),
    ("B项正确，其余选项均不符合题意。", "B"),
    ("DNA 检测提示 B 项正确", "B"),
    ("结合转移性右下腹痛，最可能的诊断是 E。", "E"),
    # bold letters and a final standalone choice
    ("肌红蛋白出现最早，但特异性差。\n\n**C**", "C"),
    ("肌红蛋白在心肌梗死后1～2小时即升高。\n\nC", "C"),
    ("逐项分析后可知：\n\nC. 肌红蛋白", "C"),
    ("我认为是 C 肌红蛋白", "C"),
    # medical terms around a stated answer
    ("答案：C。建议患者选择B超复查。", "C"),  # issue 13: was read as B
    ("答案：C（维生素C缺乏会导致坏血病，与本题无关）", "C"),
    ("CT检查未见出血，腰穿示脑脊液压力升高，故选D。", "D"),
    ("答案为B，建议同时完善X线和B超检查。", "B"),
    ("患者为A型血，输血前需交叉配血。答案：D", "D"),
    ("C反应蛋白升高提示感染，正确答案为E。", "E"),
    # traps: no answer is stated
    ("建议先做B超检查。", ""),  # issue 13: was read as B
    ("建议患者选择B超复查，必要时行X线检查。", ""),
    ("可以补充维生素C，并复查CT。", ""),
    ("A型血和B型血的患者都可以接受O型血的红细胞。", ""),
    ("C反应蛋白升高，T细胞和B细胞比例下降。", ""),
    ("Child-Pugh C级，肝功能失代偿。", ""),
    ("需要检查DNA、ECG和HbA1c。", ""),
    ("不选A，也不选B。", ""),
    ("选项A错误，选项B也错误。", ""),
    ("A和C都有可能，也可能是D。", ""),
    ("逐项分析：\nA. 肌酸激酶同工酶：升高较晚\nE. 天门冬氨酸氨基转移酶：特异性差，已少用于诊断", ""),
    ("这道题我不确定。", ""),
    # more stated answers in the forms models write
    ("综上，本题答案为C。", "C"),
    ("因此，正确选项是 B。", "B"),
    ("【答案】D", "D"),
    ("答案：\n\nE", "E"),
    ("答案应该是A。", "A"),
    ("答案选：C", "C"),
    ("**正确答案：B**", "B"),
    ("正确答案：**A、D**", "AD"),
    ("最可能的诊断是 C。", "C"),
    ("选 D。", "D"),
    ("故本题选B。", "B"),
    ("应选择C项。", "C"),
    ("C项最符合题意。", "C"),
    ("D为正确答案。", "D"),
    ("选项C当选。", "C"),
    ("所以答案是：\n**C. 肌红蛋白**", "C"),
    ("肌红蛋白最早升高。\n\n（C）", "C"),
    ("综合分析，选择 **B**。", "B"),
    ("D. 乳酸脱氢酶", "D"),
    ("答案：C\n\n解析：肌红蛋白分子量小，心肌损伤后1~2小时即可升高。B超和X线对此无帮助。", "C"),
    ("答案：E。维生素C、维生素B12与本题无关。", "E"),
    ("T细胞介导的免疫反应与本题无关，正确答案是A。", "A"),
    # more traps: letters that are not choices
    ("建议行B超和CT检查，必要时复查C反应蛋白。", ""),
    ("HbA1c 7.5%，LDL-C 3.2 mmol/L。", ""),
    ("乙肝病毒表面抗原阳性，提示HBV感染。", ""),
    ("IgA肾病与IgG4相关疾病需鉴别。", ""),
    ("需要补充维生素D和钙剂。", ""),
    ("患者为B型血，Rh阳性。", ""),
    ("A族链球菌感染后可发生风湿热。", ""),
    ("心电图示T波倒置，ST段压低。", ""),
    ("不能选A，也不宜选B。", ""),
    ("我还需要更多信息才能判断。", ""),
]


@pytest.mark.parametrize("answer, choice", MCQ_CASES)
def test_extract_choice(answer, choice):
    assert extract_choice(answer, MCQ_OPTIONS) == choice


def test_the_table_is_large_and_covers_each_kind_of_reply():
    assert len(MCQ_CASES) >= 120
    assert len({a for a, _ in MCQ_CASES}) == len(MCQ_CASES)  # no case twice
    assert sum(1 for _, choice in MCQ_CASES if not choice) >= 30  # traps and ambiguous replies
    assert sum(1 for _, choice in MCQ_CASES if len(choice) > 1) >= 15  # 多选
    assert sum(1 for a, _ in MCQ_CASES if any("a" <= ch <= "z" for ch in a.replace("boxed", ""))) >= 15  # English / lower case


@pytest.mark.parametrize("output, choice", [
    ("先考虑A，但A是晚期标志物……\n</think>\n\n答案：C", "C"),  # a letter in the reasoning the answer contradicts
    ("答案：B\n</think>\n\n综上，答案是D。", "D"),
    ("我倾向于选A。\n</think>\n\n经过再次核对，正确答案是 E。", "E"),
    ("答案应为C。", ""),  # the think block never closed: cut off, no answer
    ("A正确，B错误\n</think>\n\n", ""),  # the verdicts are reasoning only; the answer is empty
])
def test_only_the_answer_after_think_counts(output, choice):
    assert completion_choice(output, MCQ_OPTIONS) == choice
