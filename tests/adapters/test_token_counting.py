from adapters.tiktoken_counter import TiktokenCounter


def test_counts_as_the_gpt_4o_family_does_without_the_network():
    counter = TiktokenCounter()
    assert counter.encoding.name == "o200k_base"
    assert counter.count("hello world") == 2
    assert counter.count("") == 0
    assert counter.tail("one two three four", 2) == " three four"
    assert counter.tail("short", 10) == "short"
    assert counter.tail("anything", 0) == ""


def test_each_model_is_counted_with_its_own_encoding_offline():
    counter = TiktokenCounter()
    assert counter.for_model("gpt-4o-mini-2024-07-18") is counter
    assert counter.for_model("gpt-4.1-nano").encoding.name == "o200k_base"
    assert counter.for_model("an-unknown-future-model").encoding.name == "o200k_base"
    older = counter.for_model("gpt-4-0613")
    assert older.encoding.name == "cl100k_base" and counter.for_model("gpt-3.5-turbo") is older
    # The encodings differ on ordinary text: a wrong one would be caught.
    text = "Größenordnung: 12345 ÄÖÜ — naïve café"
    assert older.count(text) != counter.count(text)
    assert older.count("hello world") == 2
