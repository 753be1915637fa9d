"""What the data commands print."""
from __future__ import annotations

from materialize.cli import print_lookup


def test_lookup_rounds_floats(capsys):
    print_lookup({"category_entropy_30d": [0.45299895190961836], "spend_30d": [154.48], "view_count_7d": [22],
                  "dominant_category_30d": [None], "category_share_7d": [[0.8861234567, 0.0, 0.11387654]],
                  "recent_gap_seconds": [[41.79999923706055] * 50]})
    lines = {line.split()[0]: line.split(maxsplit=1)[1] for line in capsys.readouterr().out.splitlines()}
    assert lines == {
        "category_entropy_30d": "0.453", "spend_30d": "154.48", "view_count_7d": "22", "dominant_category_30d": "None",
        "category_share_7d": "[0.8861, 0.0, 0.1139]", "recent_gap_seconds": "[" + ", ".join(["41.8"] * 8) + "] (last 8 of 50)",
    }
