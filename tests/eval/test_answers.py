"""Answer extraction: every supported way of answering, and every way of not answering."""

from __future__ import annotations

import pytest

from echo.answers import extract_answer
from echo.protocol import ECHO_PROMPT, build_prompt
from echo.eval.prompts import build_messages

CHOICES = ["Man", "Woman", "Child", "Robot"]


@pytest.mark.parametrize(
    "response, index, source, method",
    [
        ("<think>x <seg>1.00, 2.00</seg> y</think><answer>Woman</answer>", 1, "answer_tag", "text"),
        ("<answer>woman.</answer>", 1, "answer_tag", "text"),
        ("<answer> 'Child' </answer>", 2, "answer_tag", "text"),
        ("<answer>**Robot**</answer>", 3, "answer_tag", "text"),
        ("<answer>C</answer>", 2, "answer_tag", "letter"),
        ("<answer>(d)</answer>", 3, "answer_tag", "letter"),
        ("<answer>Option B</answer>", 1, "answer_tag", "letter"),
        ("<answer>B) Woman</answer>", 1, "answer_tag", "letter_text"),
        ("<answer>A. Woman</answer>", 1, "answer_tag", "letter_text"),  # the text wins over a mismatched letter
        ("<answer>The answer is Child</answer>", 2, "answer_tag", "text"),
        ("<answer>It is a child speaking</answer>", 2, "answer_tag", "tokens"),
        ("<answer>first</answer><answer>Robot</answer>", 3, "answer_tag", "text"),  # the last one counts
        ("<think>done</think><answer>Man", 0, "answer_tag_unclosed", "text"),  # cut off before </answer>
        ("The correct answer is: Woman.\nBecause...", 1, "answer_phrase", "text"),
        ("Robot", 3, "bare", "text"),
        ("<think>I hear a man</think>Child", 2, "bare", "text"),
        ("<answer>E</answer>", None, "answer_tag", "none"),
        ("<answer>barking</answer>", None, "answer_tag", "none"),  # matches nothing
        ("<answer>the left speaker</answer>", None, "answer_tag", "none"),  # a letter beyond the choices
        ("<answer>Man or Woman</answer>", None, "answer_tag", "none"),
        ("<answer></answer>", None, "answer_tag", "none"),
        ("<answer>a dog</answer>", None, "answer_tag", "none"),
        ("<think>still thinking about the man and", None, "none", "none"),
        ("", None, "none", "none"),
        ("   ", None, "none", "none"),
    ],
)
def test_extract_answer(response, index, source, method):
    ex = extract_answer(response, CHOICES)
    assert (ex.choice_index, ex.source, ex.method) == (index, source, method)
    assert ex.prediction == ("" if index is None else CHOICES[index])
    assert ex.no_answer is (index is None)


def test_choice_text_beats_letter_when_choices_are_letters():
    # Musical keys: the answer "A" is the choice "A", not the first option.
    choices = ["C", "G", "A", "E"]
    assert extract_answer("<answer>A</answer>", choices).choice_index == 2
    assert extract_answer("<answer>(b)</answer>", choices).choice_index == 1


def test_never_falls_back_to_first_choice():
    for response in ["I am not sure.", "<answer>none of these</answer>", "<think>hmm"]:
        ex = extract_answer(response, CHOICES)
        assert ex.choice_index is None and ex.prediction == ""


def test_echo_prompt_is_the_papers_text():
    text = build_prompt("Who is speaking?", ["Man", "Woman"])
    assert text == (
        "Who is speaking? Choose the answer from ['Man', 'Woman']. Think step-by-step. Refer to the specific audio "
        "segments while thinking, and indicate the corresponding timestamps. Answer in the format of "
        "<think>...</think><answer>...</answer>."
    )
    msgs = build_messages("/a/x.wav", "Who is speaking?", ["Man", "Woman"])
    assert msgs[0]["role"] == "user"
    assert msgs[0]["content"][0] == {"type": "audio", "audio": "/a/x.wav"}
    assert msgs[0]["content"][1] == {"type": "text", "text": text}
    assert "{question}" in ECHO_PROMPT and "{choices}" in ECHO_PROMPT


def test_shortened_choice_maps_only_when_unambiguous():
    choices = ["A dog barking", "A dog growling", "A cat", "Silence"]
    assert extract_answer("<answer>barking</answer>", choices).choice_index == 0
    assert extract_answer("<answer>barking</answer>", choices).method == "subset"
    assert extract_answer("<answer>dog</answer>", choices).choice_index is None  # two choices have "dog"
    assert extract_answer("<answer>a</answer>", ["A man", "A woman"]).choice_index == 0  # "a" as option letter


SPAN_CHOICES = ["<seg>1.00, 2.00</seg>", "<seg>4.00, 6.00</seg>", "<seg>7.50, 8.10</seg>", "<seg>9.00, 9.90</seg>"]


@pytest.mark.parametrize("response, index, prediction", [
    ("<think>x</think><answer><seg>4.00, 6.00</seg></answer>", 1, SPAN_CHOICES[1]),  # the choice itself
    ("<think>x</think><answer><seg>4.2, 5.9</seg><|audio_bos|><|AUDIO|><|audio_eos|></answer>", 1,
     SPAN_CHOICES[1]),  # a close span, the re-listened audio after it: IoU 0.85
    ("<answer>7.4, 8.2</answer>", 2, SPAN_CHOICES[2]),  # bare span grammar: IoU 0.75
    ("<answer><seg>4.0, 5.0</seg></answer>", 1, SPAN_CHOICES[1]),  # IoU exactly 0.5: the threshold is inclusive
    ("<answer><seg>4.0, 4.9</seg></answer>", None, "<seg>4.00, 4.90</seg>"),  # IoU 0.45
    ("<answer><seg>2.5, 3.5</seg></answer>", None, "<seg>2.50, 3.50</seg>"),  # on no choice: wrong, not missing
    ("<answer>C</answer>", 2, SPAN_CHOICES[2]),  # a letter still names a choice
])
def test_a_written_span_names_the_choice_it_overlaps(response, index, prediction):
    ex = extract_answer(response, SPAN_CHOICES)
    assert (ex.choice_index, ex.prediction) == (index, prediction)
    assert not ex.no_answer
    assert ex.method == ("letter" if response == "<answer>C</answer>" else "span")


def test_span_answers_score_by_iou_once_extracted():
    """What the extraction writes scores as the IoU rule says, through the one scoring function."""
    from echo.answers import prediction_correct

    truth = SPAN_CHOICES[1]
    for response, right in (("<answer><seg>4.2, 5.9</seg></answer>", True), ("<answer>4.0, 4.9</answer>", False),
                            ("<answer><seg>6.00, 4.00</seg></answer>", False)):  # reversed: the same tokens, no IoU
        ex = extract_answer(response, SPAN_CHOICES)
        assert prediction_correct(truth, ex.prediction, SPAN_CHOICES) is right, response
