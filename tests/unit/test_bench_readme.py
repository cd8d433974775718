import pytest

from bench.run import TABLE_END, TABLE_START, with_table


def test_the_table_between_the_markers_is_replaced_and_the_rest_kept() -> None:
    readme = f"# Title\n\nBefore.\n\n{TABLE_START}\n\n| old | table |\n\n{TABLE_END}\n\nAfter.\n"
    updated = with_table(readme, "| new | table |\n\nMeasured today.\n")
    table = "| new | table |\n\nMeasured today."
    assert updated == f"# Title\n\nBefore.\n\n{TABLE_START}\n\n{table}\n\n{TABLE_END}\n\nAfter.\n"
    assert with_table(updated, "| new | table |\n\nMeasured today.") == updated


@pytest.mark.parametrize("readme", ["no markers", f"{TABLE_END}\n{TABLE_START}\n", f"{TABLE_START}\nno end"])
def test_a_readme_without_both_markers_in_order_is_refused(readme: str) -> None:
    with pytest.raises(ValueError, match="bench-table"):
        with_table(readme, "| t |")


def test_the_committed_readme_has_the_markers() -> None:
    from bench.run import README

    text = README.read_text(encoding="utf-8")
    assert text.index(TABLE_START) < text.index(TABLE_END)
