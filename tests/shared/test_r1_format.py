"""The R1 think format: SFT targets, parsing of model output (no opening <think>, unclosed think), history."""
from r1_sft.r1_format import build_user_text, chat_messages, format_output, parse_output, target_text


def test_format_output_is_native_think_format():
    out = format_output("患者发热三天。\n", "  建议就医。 ")
    assert out == "<think>\n患者发热三天。\n</think>\n\n建议就医。"


def test_instruction_goes_in_front_of_question_not_in_a_system_prompt():
    assert build_user_text("头痛怎么办？", "请以神经内科医生身份回答。") == "请以神经内科医生身份回答。\n\n头痛怎么办？"
    assert build_user_text("头痛怎么办？", "") == "头痛怎么办？"
    assert build_user_text("  头痛怎么办？ ", "   ") == "头痛怎么办？"


def test_parse_round_trips_the_sft_output():
    parsed = parse_output(format_output("先考虑感染。", "1. 多喝水\n2. 及时就医"))
    assert parsed.reasoning == "先考虑感染。"
    assert parsed.answer == "1. 多喝水\n2. 及时就医"
    assert parsed.think_closed


def test_parse_generated_text_without_opening_tag():
    # The generation prompt ends in "<think>\n", so the model's text starts inside the think block.
    parsed = parse_output("考虑上呼吸道感染。\n</think>\n\n多休息，高热不退请就医。")
    assert parsed == parse_output("<think>\n考虑上呼吸道感染。\n</think>\n\n多休息，高热不退请就医。")
    assert parsed.answer == "多休息，高热不退请就医。"


def test_unclosed_think_means_no_answer():
    for text in ("考虑上呼吸道感染，需要进一步", "<think>\n考虑上呼吸道感染"):
        parsed = parse_output(text)
        assert not parsed.think_closed
        assert parsed.answer == ""
        assert parsed.reasoning.startswith("考虑")


def test_target_text_drops_only_the_opening_tag_the_prompt_already_has():
    assert target_text(format_output("推理", "回答")) == "推理\n</think>\n\n回答"


def test_history_for_next_prompt_carries_answers_without_reasoning():
    history = [{"role": "user", "content": "我咳嗽"},
               {"role": "assistant", "content": format_output("秘密推理内容", "多喝水，症状加重就医。")}]
    messages = chat_messages(history, "还需要做什么检查？")
    assert messages[1] == {"role": "assistant", "content": "多喝水，症状加重就医。"}
    assert "秘密推理内容" not in str(messages)
    assert messages[-1] == {"role": "user", "content": "还需要做什么检查？"}
