from adapters.tiktoken_counter import TiktokenCounter


def test_counts_as_the_gpt_4o_family_does_without_the_network():
    counter = TiktokenCounter()
    assert counter.encoding.name == "o200k_base"
    assert counter.count("hello world") == 2
    assert counter.count("") == 0
    assert counter.tail("one two three four", 2) == " three four"
    assert counter.tail("short", 10) == "short"
    assert counter.tail("anything", 0) == ""
