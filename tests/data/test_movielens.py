"""MovieLens parsers: every release layout, malformed lines, detection and real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reccomp.data.movielens import ML100K_GENRES, movielens_sources, read_movielens
from reccomp.data.raw import MalformedInputError

DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    write(
        d / "u.data",
        "1\t10\t3\t881250949\n"
        "2\t20\t5\t881250950\n"
        "1\t20\t4\n"  # line 3: 3 fields
        "3\t10\t1\t881250951\n"  # user 3 is not in u.user
        "x\t10\t1\t881250952\n"  # line 5: not a number
        "2\t30\t2\t881250953\n",
    )
    write(d / "u.user", "1|24|M|technician|85711\n2|53|F|other|\n")
    write(
        d / "u.item",
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 5)}\n"
        f"20|Jumanji (1994)|||http://y|{flags(0)}\n"  # no date: year from the title
        f"30|unknown|||http://z|{flags()}\n",
        "latin-1",
    )
    write(d / "u.genre", "".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n")
    return d


def test_ml100k_fields_and_join(ml100k: Path) -> None:
    raw = read_movielens(ml100k)
    assert raw.name == raw.stats["format"] == "ml-100k"
    assert (raw.user_field, raw.item_field) == ("user", "item")
    np.testing.assert_array_equal(raw.sparse["user"], [1, 2, 3, 2])
    np.testing.assert_array_equal(raw.sparse["item"], [10, 20, 10, 30])
    assert raw.sparse["user"].dtype == np.int64 and raw.label.dtype == np.float32
    np.testing.assert_array_equal(raw.label, [3, 5, 1, 2])
    np.testing.assert_array_equal(raw.time, [881250949, 881250950, 881250951, 881250953])
    # user 3 is absent from u.user: kept, with missing side values
    np.testing.assert_array_equal(raw.sparse["gender"], ["M", "F", "", "F"])
    np.testing.assert_array_equal(raw.missing["gender"], [False, False, True, False])
    np.testing.assert_array_equal(raw.sparse["age"], [24, 53, -1, 53])
    np.testing.assert_array_equal(raw.sparse["zip"], ["857", "", "", ""])
    np.testing.assert_array_equal(raw.missing["zip"], [False, True, True, True])
    np.testing.assert_array_equal(raw.sparse["year"], [1995, 1994, 1995, -1])
    np.testing.assert_array_equal(raw.missing["year"], [False, False, False, True])
    names = raw.stats["genres"]
    assert names == ["Animation", "Comedy", "unknown"]  # only the genres that occur, sorted
    bags = raw.sparse["genres"]
    assert bags.shape == (4, 2) and bags.dtype == np.int64
    assert [[names[i] for i in row if i >= 0] for row in bags] == [
        ["Animation", "Comedy"],
        ["unknown"],
        ["Animation", "Comedy"],
        [],
    ]


def test_ml100k_malformed_counted_with_line_numbers(ml100k: Path) -> None:
    report = read_movielens(ml100k).reports[0]
    assert report.source.endswith("u.data")
    assert (report.lines, report.skipped) == (6, 2)
    assert report.examples == [
        "line 3: expected 4 fields, got 3",
        "line 5: user: not a number: 'x'",
    ]
    with pytest.raises(MalformedInputError, match=r"u\.data: line 3: expected 4 fields"):
        read_movielens(ml100k, strict=True)


def test_ml100k_without_genre_file_uses_standard_names(ml100k: Path) -> None:
    (ml100k / "u.genre").unlink()
    assert read_movielens(ml100k).stats["genres"] == ["Animation", "Comedy", "unknown"]


def test_side_features_off_needs_only_ratings(ml100k: Path) -> None:
    (ml100k / "u.item").unlink()
    raw = read_movielens(ml100k, side_features=False)
    assert set(raw.sparse) == {"user", "item"} and raw.missing == {}
    assert movielens_sources(ml100k, side_features=False) == [ml100k / "u.data"]
    with pytest.raises(FileNotFoundError, match=r"u\.item.*reccomp data download ml-100k"):
        read_movielens(ml100k)


def test_ml1m_latin1_titles_and_missing_user(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    write(
        d / "ratings.dat",
        "1::1193::5::978300760\n"
        "1::2::3::978302109\n"
        "9::1193::4::978301968\n"  # user 9 is not in users.dat
        "2::2::4::not-a-time\n"  # line 4
        "2::2::4::1:2\n",  # line 5: a stray ':' is not a separator
    )
    write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    write(
        d / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "2::Misérables, Les (1995)::Drama|Musical\n",
        "latin-1",
    )
    raw = read_movielens(d)
    assert raw.name == "ml-1m"
    np.testing.assert_array_equal(raw.sparse["user"], [1, 1, 9])
    np.testing.assert_array_equal(raw.sparse["occupation"], [10, 10, -1])
    np.testing.assert_array_equal(raw.missing["occupation"], [False, False, True])
    np.testing.assert_array_equal(raw.sparse["gender"], ["F", "F", ""])
    np.testing.assert_array_equal(raw.sparse["year"], [1975, 1995, 1975])
    assert raw.stats["genres"] == ["Drama", "Musical"]
    np.testing.assert_array_equal(raw.sparse["genres"], [[0, -1], [0, 1], [0, -1]])
    ratings = raw.reports[0]
    assert (ratings.lines, ratings.skipped) == (5, 2)
    assert ratings.examples[0] == "line 4: timestamp: not a number: 'not-a-time'"
    assert ratings.examples[1].startswith("line 5: ")
    with pytest.raises(MalformedInputError, match=r"ratings\.dat: line 4: timestamp"):
        read_movielens(d, strict=True)


def test_bad_side_lines_skipped_or_raised(tmp_path: Path) -> None:
    d = write(tmp_path / "ml-1m" / "ratings.dat", "1::1::5::1\n2::1::4::2\n3::1::3::3\n").parent
    write(
        d / "users.dat", "1::F::1::10::48067\n2::M::abc::16::70072\n1::M::1::10::1\n3::M::1::10\n"
    )
    write(d / "movies.dat", "1::Heat (1995)::Action\n")
    users = read_movielens(d).reports[1]
    assert (users.lines, users.skipped) == (4, 3)
    assert users.examples == [
        "line 2: age: not a number: 'abc'",
        "line 3: duplicate id 1",
        "line 4: expected 5 fields, got 4",
    ]
    with pytest.raises(MalformedInputError, match=r"users\.dat: line 2: age"):
        read_movielens(d, strict=True)


def test_titles_decoded_as_utf8_else_latin1() -> None:
    from reccomp.data.movielens import _decode

    assert _decode("Misérables".encode("latin-1")) == "Misérables"
    assert _decode("Misérables".encode()) == "Misérables"


def test_ml10m_half_stars_utf8_no_users(tmp_path: Path) -> None:
    d = tmp_path / "ml-10M100K"
    write(
        d / "ratings.dat",
        "1::122::3.5::838985046\n1::185::5::838983525\n\n2::231::0.5::838983392\n",
    )
    write(
        d / "movies.dat",
        "122::Boomerang (1992)::Comedy|Romance\n"
        "185::Ça commence aujourd'hui (1999)::(no genres listed)\n"
        "231::Dumb & Dumber (1994)::Comedy\n"
        "232::Broken::line\n"
        "bad line\n",
    )
    raw = read_movielens(d)
    assert raw.name == "ml-10m"
    np.testing.assert_array_equal(raw.label, np.array([3.5, 5, 0.5], np.float32))
    assert "gender" not in raw.sparse and len(raw.reports) == 2
    np.testing.assert_array_equal(raw.sparse["genres"], [[0, 1], [-1, -1], [0, -1]])
    np.testing.assert_array_equal(raw.sparse["year"], [1992, 1999, 1994])
    movies = raw.reports[1]
    assert (movies.lines, movies.skipped) == (5, 1)
    assert movies.examples == ["line 5: expected 3 fields, got 1"]
    assert raw.reports[0].lines == 3  # the empty line is no data line


def test_ml25m_csv_quoted_titles(tmp_path: Path) -> None:
    d = tmp_path / "ml-25m"
    write(
        d / "ratings.csv",
        "userId,movieId,rating,timestamp\r\n"
        "1,11,4.0,1147880044\r\n"
        "1,12,3.5,1147868817\r\n"
        "2,11,nan,1147868828\r\n"  # line 4: NaN is no rating
        "2,13,2.5,1147868829,7\r\n"  # line 5: 5 fields
        "3,99,1.0,1147868830\r\n",  # movie 99 is not in movies.csv
    )
    write(
        d / "movies.csv",
        "movieId,title,genres\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '12,"Twin Peaks (1989-1991)",Drama|Mystery\n'
        "13,Untitled,(no genres listed)\n",
    )
    raw = read_movielens(d)
    assert raw.name == "ml-25m"
    np.testing.assert_array_equal(raw.sparse["item"], [11, 12, 99])
    np.testing.assert_array_equal(raw.label, [4.0, 3.5, 1.0])
    np.testing.assert_array_equal(raw.sparse["year"], [1995, 1989, -1])
    np.testing.assert_array_equal(raw.missing["year"], [False, False, True])
    assert raw.stats["genres"] == ["Comedy", "Drama", "Mystery", "Romance"]
    np.testing.assert_array_equal(raw.sparse["genres"], [[0, 1, 3], [1, 2, -1], [-1, -1, -1]])
    report = raw.reports[0]
    assert (report.lines, report.skipped) == (5, 2)
    assert report.examples == [
        "line 4: rating: not a number: 'nan'",
        "line 5: expected 4 fields, got 5",
    ]
    assert raw.reports[1].skipped == 0


def test_validated_path_matches_fast_path(tmp_path: Path) -> None:
    """A bad value switches to per-row validation; the other rows must parse the same."""
    rng = np.random.default_rng(0)
    rows = [f"{u},{i},{r},{t}" for u, i, r, t in rng.integers(1, 500, (3000, 4))]
    clean = write(tmp_path / "a" / "ratings.csv", "\n".join(rows) + "\n").parent
    bad_rows = [*rows[:1000], "5,abc,3,7", " 7 , 8 ,2.5, 9", *rows[1000:]]
    dirty = write(tmp_path / "b" / "ratings.csv", "\n".join(bad_rows) + "\n").parent
    a = read_movielens(clean, side_features=False)
    b = read_movielens(dirty, side_features=False)
    assert a.name == "ml-csv" and b.reports[0].skipped == 1
    assert b.reports[0].examples == ["line 1001: item: not a number: 'abc'"]
    keep = np.r_[0:1000, 1001:3001]  # the padded-with-spaces row is valid
    np.testing.assert_array_equal(b.sparse["user"][keep], a.sparse["user"])
    np.testing.assert_array_equal(b.label[keep], a.label)
    np.testing.assert_array_equal(b.time[keep], a.time)
    assert (b.sparse["user"][1000], b.label[1000], b.time[1000]) == (7, 2.5, 9)


def test_detects_release_in_parent_dir(ml100k: Path) -> None:
    raw = read_movielens(ml100k.parent)
    assert raw.name == "ml-100k" and len(raw) == 4
    assert len(read_movielens(ml100k / "u.data")) == 4  # a file names its folder
    write(ml100k.parent / "ml-1m" / "ratings.dat", "1::2::3::4\n")
    with pytest.raises(ValueError, match="several MovieLens releases"):
        read_movielens(ml100k.parent)


def test_missing_files_say_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        read_movielens(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "reccomp data download ml-1m --root" in msg
    assert "ml-100k" in msg and "ml-25m" in msg and "ml-latest-small" in msg
    d = write(tmp_path / "ml-1m" / "ratings.dat", "1::2::3::4\n").parent
    write(d / "users.dat", "1::F::1::10::48067\n")
    with pytest.raises(FileNotFoundError, match=r"movies\.dat.*download ml-1m"):
        read_movielens(d)


def test_file_without_valid_lines_is_an_error(tmp_path: Path) -> None:
    d = write(tmp_path / "ml-1m" / "ratings.dat", "1,2,3,4\n5,6,7,8\n").parent
    with pytest.raises(MalformedInputError, match="no valid rating lines"):
        read_movielens(d, side_features=False)
    (d / "ratings.dat").write_text("\n")
    with pytest.raises(MalformedInputError, match=r"ratings\.dat is empty"):
        read_movielens(d, side_features=False)


# -- real data (../shared/datasets) ----------------------------------------------------------
def real(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def test_real_ml100k() -> None:
    raw = read_movielens(real("ml-100k"))
    assert raw.name == "ml-100k" and len(raw) == 100_000
    assert len(np.unique(raw.sparse["user"])) == 943
    assert len(np.unique(raw.sparse["item"])) == 1682
    assert [r.skipped for r in raw.reports] == [0, 0, 0]
    assert [r.lines for r in raw.reports] == [100_000, 943, 1682]
    assert not raw.missing["gender"].any() and not raw.missing["age"].any()
    assert set(np.unique(raw.label)) == {1, 2, 3, 4, 5}
    assert len(raw.stats["genres"]) == 19
    assert (raw.sparse["genres"] >= 0).any(axis=1).all()  # every 100K movie has a flag


def test_real_ml1m_head() -> None:
    raw = read_movielens(real("ml-1m-head"))
    assert raw.name == "ml-1m" and len(raw) == 487_515
    assert len(np.unique(raw.sparse["user"])) == 2998
    assert len(np.unique(raw.sparse["item"])) == 3615
    assert [r.skipped for r in raw.reports] == [0, 0, 0]
    assert not any(m.any() for m in raw.missing.values())
    assert len(raw.stats["genres"]) == 18
    assert set(np.unique(raw.sparse["age"])) <= {1, 18, 25, 35, 45, 50, 56}


def test_join_with_ids_too_large_for_a_lookup_table(tmp_path: Path) -> None:
    big = 10**12
    d = write(tmp_path / "ml-latest" / "ratings.csv", f"1,{big},4,1\n1,-5,3,2\n1,7,2,3\n").parent
    write(
        d / "movies.csv", f"movieId,title,genres\n{big},Big (1988),Comedy\n7,Seven (1995),Crime\n"
    )
    raw = read_movielens(d)
    assert raw.name == "ml-latest"
    np.testing.assert_array_equal(raw.sparse["item"], [big, -5, 7])
    np.testing.assert_array_equal(raw.sparse["year"], [1988, -1, 1995])
    np.testing.assert_array_equal(raw.sparse["genres"], [[0], [-1], [1]])
