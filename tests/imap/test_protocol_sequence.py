"""SequenceSet parsing, resolution and compression."""

import pytest

from mailserver.imap.protocol.sequence import SequenceSet, compress


def test_parse_and_str_roundtrip() -> None:
    for text in ("1", "1:3", "3:1", "*", "1:*", "*:4", "1,3:5,7:*", "$", "1:2,$"):
        assert str(SequenceSet.parse(text)) == text
    assert SequenceSet.parse("5:2").ranges == ((5, 2),)
    assert SequenceSet.parse("$").saved


@pytest.mark.parametrize("text", ["", "0", "1:0", "01", "1,", ",1", "1::2", "a", "1:2:3", "4294967296", "１"])
def test_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        SequenceSet.parse(text)


def test_resolve_merges_and_handles_star() -> None:
    s = SequenceSet.parse("5:3,1,2,9:*,20")
    assert s.resolve(10) == [(1, 5), (9, 10), (20, 20)]
    assert SequenceSet.parse("15:*").resolve(10) == [(10, 15)]
    assert SequenceSet.parse("1:*").resolve(0) == []
    assert list(SequenceSet.parse("3:*,1").iter(5)) == [1, 3, 4, 5]
    assert list(SequenceSet.parse("4:7").iter(5)) == [4, 5]
    assert SequenceSet.parse("2:4").contains(3, 10)
    assert not SequenceSet.parse("2:4").contains(5, 10)
    assert SequenceSet.parse("1:*").has_star
    assert not SequenceSet.parse("1:5").has_star


def test_huge_ranges_are_not_materialised() -> None:
    s = SequenceSet.parse("1:4294967295")
    assert s.resolve(4294967295) == [(1, 4294967295)]
    assert s.contains(4000000000, 4294967295)
    it = s.iter(4294967295)
    assert next(it) == 1


def test_select_uids() -> None:
    uids = [2, 4, 6, 8, 100, 1000]
    assert SequenceSet.parse("3:7,100").select_uids(uids) == [4, 6, 100]
    assert SequenceSet.parse("*").select_uids(uids) == [1000]
    assert SequenceSet.parse("2000:*").select_uids(uids) == [1000]
    assert SequenceSet.parse("1:*").select_uids([]) == []


def test_with_saved() -> None:
    s = SequenceSet.parse("1,$")
    assert s.with_saved(SequenceSet.parse("5:6")).resolve(10) == [(1, 1), (5, 6)]
    assert SequenceSet.parse("$").with_saved(None).resolve(10) == []
    plain = SequenceSet.parse("1")
    assert plain.with_saved(None) is plain


def test_compress() -> None:
    assert compress([5, 1, 2, 3, 3]) == "1:3,5"
    assert compress([]) == ""
    assert compress([7]) == "7"
    assert str(SequenceSet.from_numbers(range(1, 100001))) == "1:100000"
