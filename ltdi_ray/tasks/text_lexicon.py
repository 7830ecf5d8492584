"""The words text tasks are drawn from (``task=text``), written for this project.

Every word, with a leading space, is one token of SmolLM2's tokenizer (``tests/test_text_family.py`` checks
it when the model is installed), so that every prompt of a task has the same length. ``CATEGORIES`` are
nouns by topic; ``POSITIVE`` and ``NEGATIVE`` are adjectives by sentiment; ``LABEL_WORDS`` are the words
tasks answer with (arbitrary per task: the model must learn the mapping from the examples), disjoint from
the inputs.
"""

CATEGORIES = {
    "animal": (
        "cat dog horse cow pig sheep goat lion tiger bear wolf fox deer rabbit mouse rat bird duck eagle owl "
        "fish shark whale snake frog monkey elephant camel zebra bee ant spider chicken turkey goose crab "
        "seal donkey"
    ).split(),
    "food": (
        "bread cheese apple banana orange rice pasta pizza soup salad cake cookie egg butter milk meat beef "
        "pork sugar honey grape lemon potato tomato onion carrot corn bean pie candy chocolate sandwich steak"
    ).split(),
    "body": (
        "hand foot head arm leg eye ear nose mouth tooth hair neck knee finger toe heart brain lung skin bone "
        "back chest lip shoulder stomach blood face thumb"
    ).split(),
    "clothing": (
        "shirt hat coat dress shoe boot sock jacket skirt glove belt tie suit jeans pants hood cap uniform "
        "vest robe"
    ).split(),
    "vehicle": (
        "car bus truck train plane boat ship bike taxi van jet tank tram rocket helicopter canoe wagon cart "
        "subway"
    ).split(),
    "tool": (
        "hammer knife saw drill wrench axe shovel rope nail screw brush needle scissors ladder pen pencil "
        "spoon fork key lock"
    ).split(),
    "job": (
        "doctor teacher nurse lawyer farmer chef pilot driver baker soldier judge artist writer singer actor "
        "engineer pastor clerk police manager"
    ).split(),
    "place": (
        "house school church hospital office bank hotel park garden farm market shop library museum castle "
        "bridge tower prison station airport beach forest island village city"
    ).split(),
    "nature": (
        "tree flower grass leaf river lake ocean mountain hill rock sand stone cloud rain snow wind storm sun "
        "moon star sky fire ice wood"
    ).split(),
    "colour": "red blue green yellow black white brown pink purple grey silver gold violet".split(),
}
POSITIVE = (
    "good great happy kind nice brave calm clean bright warm fresh sweet smart strong gentle honest lucky "
    "proud rich safe wise friendly beautiful lovely perfect excellent pleasant cheerful healthy joyful"
).split()
NEGATIVE = (
    "bad sad angry cruel mean rude dirty dark cold rotten bitter stupid weak lazy evil ugly poor sick "
    "tired nasty awful horrible terrible lonely painful boring guilty selfish wicked hostile"
).split()
LABEL_WORDS = (
    "alpha beta gamma delta sigma omega north south east west up down left right yes no true false one "
    "two three four five six seven eight nine ten zero maybe never always plus minus hot open closed high "
    "low"
).split()
