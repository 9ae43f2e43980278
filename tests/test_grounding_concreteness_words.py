"""The grounding study's abstract / concrete word classes: thresholds on the norms' ratings, the
cap, and the report's sentence about them (a fake norms table)."""
import numpy as np
import pytest

from grounded_fast.analysis import ConcretenessNorms
from grounded_fast.data.demo import SPECIAL_TOKENS, Vocab
from grounded_fast.experiments.grounding import concreteness_words
from grounded_fast.experiments.studies.grounding import _concreteness_words_text

RATINGS = {"idea": 1.2, "truth": 1.5, "maybe": 2.9, "blue": 3.0, "left": 3.7, "circle": 4.0,
           "apple": 4.9, "stone": 4.9, "red": 4.5, "zebra": 5.0, "ab2c": 1.0}


@pytest.fixture
def norms():
    words = list(RATINGS)
    return ConcretenessNorms(words, np.array([RATINGS[w] for w in words]), np.zeros(len(words), bool))


def test_words_by_threshold_most_extreme_first(norms):
    vocab = Vocab([*SPECIAL_TOKENS, "red", "blue", "circle", "idea", "maybe", "stone", "apple", "left",
                   "truth", "ab2c", "unrated"])  # zebra is not in the vocabulary
    words = concreteness_words(vocab, norms=norms)
    assert words["abstract"] == ["idea", "truth", "maybe"]  # 2.9 < 3.0; "blue" (3.0) is between
    assert words["concrete"] == ["apple", "stone", "circle"]  # ties by word; "red" has 3 letters
    assert words["thresholds"] == {"abstract_below": 3.0, "concrete_from": 4.0}
    assert words["counts"] == {"rated": 8, "abstract": 3, "concrete": 3, "between": 2}
    capped = concreteness_words(vocab, n_max=2, abstract_below=2.0, concrete_from=4.5, norms=norms)
    assert (capped["abstract"], capped["concrete"]) == (["idea", "truth"], ["apple", "stone"])
    assert capped["counts"] == {"rated": 8, "abstract": 2, "concrete": 2, "between": 4}
    assert concreteness_words(vocab, n_max=1, norms=norms)["counts"]["abstract"] == 3  # before the cap
    with pytest.raises(ValueError, match="abstract_below"):
        concreteness_words(vocab, abstract_below=4.5, concrete_from=4.0, norms=norms)


def test_report_names_thresholds_counts_and_words(norms):
    vocab = Vocab([*SPECIAL_TOKENS, "idea", "truth", "maybe", "blue", "apple", "stone", "circle"])
    text = _concreteness_words_text(concreteness_words(vocab, n_max=2, norms=norms))
    assert "7 words of more than 3 letters" in text
    assert "2 abstract words, rated below 3 (idea, truth)" in text
    assert "2 concrete words, rated 4 or more (apple, stone)" in text
    assert "the 1 in between are left out (abstract capped from 3; concrete capped from 3" in text
    old = _concreteness_words_text({"abstract": ["idea"], "concrete": ["apple"]})  # results stored earlier
    assert old.startswith("1 abstract words (idea) and 1 concrete words (apple)")
