"""Baselines on a tiny planted shop: two co-purchase clusters, one globally popular item."""
from __future__ import annotations

import numpy as np
import pytest

from interest_models.models.baseline import Baseline
from interest_models.models.co_purchase import CoPurchase
from interest_models.models.item_knn import ItemKNN
from interest_models.models.most_popular import MostPopular
from interest_models.models.personal_frequency import PersonalFrequency
from interest_models.models.popular_in_last_category import PopularInLastCategory
from interest_models.evaluation.metrics import target_ranks

N_ITEMS = 8
# items 1-4 are category 1, items 5-8 category 2; index 0 is padding
ITEM_CATEGORY = np.array([0, 1, 1, 1, 1, 2, 2, 2, 2])
HISTORIES = (
    [np.array([1, 2])] * 3  # cluster {1, 2}
    + [np.array([5, 6])] * 2  # cluster {5, 6}
    + [np.array([3])] * 6  # item 3: popular, bought alone
    + [np.array([1, 4]), np.array([3, 3])]
)
# interactions per item: 1:4 2:3 3:8 4:1 5:2 6:2 7:0 8:0
POPULARITY = [0, 4, 3, 8, 1, 2, 2, 0, 0]


def ranking(scores_row: np.ndarray) -> list[int]:
    """Items best first (stable for ties: lower index first), padding left out."""
    order = np.argsort(-scores_row, kind="stable")
    return [int(i) for i in order if i != 0]


@pytest.mark.parametrize("model", [MostPopular(), PopularInLastCategory(), ItemKNN(), PersonalFrequency(), CoPurchase()])
def test_common_contract(model: Baseline) -> None:
    assert isinstance(model.name, str) and model.name
    assert model.fit(HISTORIES, N_ITEMS, ITEM_CATEGORY) is model
    assert model.popularity.tolist() == POPULARITY
    recent = [np.array([1]), np.array([], dtype=np.int64), np.array([5, 6, 7])]
    scores = model.score(recent)
    assert scores.shape == (3, N_ITEMS + 1) and scores.dtype == np.float64
    assert np.all(scores[:, 0] == -np.inf) and np.all(np.isfinite(scores[:, 1:]))
    # deterministic, and 0-padded 2-D input means the same as the list
    again = type(model)().fit(HISTORIES, N_ITEMS, ITEM_CATEGORY).score(recent)
    np.testing.assert_array_equal(scores, again)
    padded = np.array([[0, 0, 1], [0, 0, 0], [5, 6, 7]])
    np.testing.assert_array_equal(scores, model.score(padded))


def test_most_popular_orders_by_count() -> None:
    scores = MostPopular().fit(HISTORIES, N_ITEMS).score([np.array([5]), np.array([1, 2])])
    assert scores[0, 1:].tolist() == POPULARITY[1:]
    np.testing.assert_array_equal(scores[0], scores[1])
    assert ranking(scores[0]) == [3, 1, 2, 5, 6, 4, 7, 8]


def test_popular_in_last_category_prefers_the_last_category() -> None:
    model = PopularInLastCategory().fit(HISTORIES, N_ITEMS, ITEM_CATEGORY)
    scores = model.score([np.array([1, 5]), np.array([5, 1]), np.array([], dtype=np.int64)])
    assert ranking(scores[0]) == [5, 6, 7, 8, 3, 1, 2, 4]  # category 2, then the rest by count
    assert ranking(scores[1]) == [3, 1, 2, 4, 5, 6, 7, 8]
    assert ranking(scores[2]) == ranking(MostPopular().fit(HISTORIES, N_ITEMS).score([[]])[0])
    with pytest.raises(ValueError, match="item_category"):
        PopularInLastCategory().fit(HISTORIES, N_ITEMS)


def test_item_knn_similarity_by_hand() -> None:
    model = ItemKNN().fit(HISTORIES, N_ITEMS)
    sim = model.similarity.toarray()
    assert sim.shape == (N_ITEMS + 1, N_ITEMS + 1)
    assert sim[1, 2] == pytest.approx(3 / np.sqrt(4 * 3))  # 3 shared users, 4 and 3 users
    assert sim[1, 4] == pytest.approx(1 / np.sqrt(4 * 1))
    assert sim[5, 6] == pytest.approx(1.0)
    assert np.all(np.diag(sim) == 0) and np.all(sim[3] == 0)  # no self-similarity
    np.testing.assert_allclose(sim, sim.T)
    # one neighbour per item keeps only the most similar
    top1 = ItemKNN(neighbours=1).fit(HISTORIES, N_ITEMS).similarity.toarray()
    assert np.flatnonzero(top1[1]).tolist() == [2]
    assert np.flatnonzero(top1[4]).tolist() == [1]


def test_item_knn_ranks_the_co_occurring_item_first() -> None:
    model = ItemKNN(decay=0.5).fit(HISTORIES, N_ITEMS)
    scores = model.score([np.array([1]), np.array([5]), np.array([4]), np.array([7]), np.array([1, 5]), np.array([5, 1])])
    assert ranking(scores[0])[0] == 2  # not the globally popular item 3
    assert ranking(scores[1])[0] == 6
    assert ranking(scores[2])[:3] == [1, 3, 2]  # neighbour first, then popularity order
    assert ranking(scores[3]) == [3, 1, 2, 5, 6, 4, 7, 8]  # no neighbours: popularity
    # recency: the most recent item's neighbour wins
    assert ranking(scores[4])[0] == 6 and ranking(scores[5])[0] == 2
    assert scores[5, 2] == pytest.approx(3 / np.sqrt(12), abs=1e-8)
    assert scores[5, 6] == pytest.approx(0.5 * 1.0, abs=1e-8)
    # only the last item counts with last_n=1
    last_only = model.score([np.array([5, 1])], last_n=1)
    assert last_only[0, 6] < 1e-8 and ItemKNN(last_n=1).fit(HISTORIES, N_ITEMS).score([[5, 1]])[0, 6] < 1e-8


def test_personal_frequency_ranks_the_users_own_items_by_count_then_recency() -> None:
    model = PersonalFrequency().fit(HISTORIES, N_ITEMS)
    scores = model.score([np.array([7, 7, 7, 3, 1]), np.array([4, 1, 4, 2, 4, 1]), np.array([1, 2]), np.array([2, 1]),
                          np.array([], dtype=np.int64)])
    assert ranking(scores[0])[:3] == [7, 1, 3]  # bought three times (by nobody else), then the most recent
    assert ranking(scores[1]) == [4, 1, 2, 3, 5, 6, 7, 8]  # 3, 2 and 1 times, then the rest by popularity
    assert ranking(scores[2])[:2] == [2, 1] and ranking(scores[3])[:2] == [1, 2]  # equal counts: most recent first
    assert ranking(scores[4]) == ranking(MostPopular().fit(HISTORIES, N_ITEMS).score([[]])[0])
    # by hand: count + last position / (n + 1); others popularity / (max + 1)
    row = model.score([np.array([4, 1, 4])])[0]
    assert row[4] == pytest.approx(2 + 3 / 4) and row[1] == pytest.approx(1 + 2 / 4)
    assert row[3] == pytest.approx(8 / 9) and row[7] == 0.0
    assert row[[1, 4]].min() > row[[2, 3, 5, 6, 7, 8]].max()


# Baskets (one per session): {1, 2} three times, {1, 4}, {5, 6} twice, {3} six times, {2, 3}.
BASKETS = [np.array([1, 2])] * 3 + [np.array([1, 4, 4])] + [np.array([5, 6])] * 2 + [np.array([3])] * 6 + [np.array([2, 3])]


def test_co_purchase_counts_shared_baskets() -> None:
    model = CoPurchase().fit(BASKETS, N_ITEMS)
    co = model.co_occurrence.toarray()
    assert co[1, 2] == co[2, 1] == 3 and co[1, 4] == 1  # 4 repeated in its basket counts once
    assert co[5, 6] == 2 and co[2, 3] == 1 and co[1, 3] == 0
    assert np.all(np.diag(co) == 0)
    normalised = CoPurchase(normalise=True).fit(BASKETS, N_ITEMS).co_occurrence.toarray()
    assert normalised[1, 2] == pytest.approx(3 / 4) and normalised[2, 1] == pytest.approx(3 / 4)
    assert normalised[4, 1] == pytest.approx(1.0) and normalised[5, 6] == pytest.approx(1.0)


def test_co_purchase_ranks_co_occurring_items_first() -> None:
    model = CoPurchase().fit(BASKETS, N_ITEMS)
    scores = model.score([np.array([1]), np.array([2]), np.array([7]), np.array([1, 5]), np.array([1, 1, 1])])
    assert ranking(scores[0]) == [2, 4, 3, 1, 5, 6, 7, 8]  # neighbours above the popular item 3
    assert ranking(scores[1])[:2] == [1, 3]
    assert ranking(scores[2]) == [3, 1, 2, 4, 5, 6, 7, 8]  # nothing shared: popularity
    assert scores[3, 2] == pytest.approx(3, abs=1e-8) and scores[3, 6] == pytest.approx(2, abs=1e-8)
    assert ranking(scores[3])[:3] == [2, 6, 4]
    np.testing.assert_array_equal(scores[4], scores[0])  # repeats count once
    # normalised: item 5's only partner (in 2 of 2 baskets) beats item 1's (3 of 4)
    assert ranking(CoPurchase(normalise=True).fit(BASKETS, N_ITEMS).score([[1, 5]])[0])[:2] == [6, 2]
    # only the last item counts with last_n=1
    assert CoPurchase(last_n=1).fit(BASKETS, N_ITEMS).score([[5, 1]])[0, 6] < 1e-8


def test_repeat_and_basket_baselines_beat_popularity_where_they_should() -> None:
    rng = np.random.default_rng(1)
    n_items, n_users = 200, 300
    # repeat buyers: each user re-buys a few favourites of their own
    favourites = [rng.choice(np.arange(1, n_items + 1), size=3, replace=False) for _ in range(n_users)]
    histories = [rng.choice(f, size=10) for f in favourites]
    recent, targets = [h[:-1] for h in histories], np.array([h[-1] for h in histories])
    frequency = target_ranks(PersonalFrequency().fit(recent, n_items).score(recent), targets)
    popular = target_ranks(MostPopular().fit(recent, n_items).score(recent), targets)
    assert np.mean(frequency <= 3) > 0.9 and np.mean(popular <= 10) < 0.3
    # baskets: items of 10 blocks of 20 are bought together; the next item is in the last basket's block
    blocks = rng.integers(0, 10, size=2000)
    baskets = [1 + 20 * b + rng.choice(20, size=4, replace=False) for b in blocks]
    train, held_out = baskets[:1500], baskets[1500:]
    recent, targets = [b[:-1] for b in held_out], np.array([b[-1] for b in held_out])
    co = target_ranks(CoPurchase().fit(train, n_items).score(recent), targets, exclude=recent)
    pop = target_ranks(MostPopular().fit(train, n_items).score(recent), targets, exclude=recent)
    assert np.mean(co <= 10) > 2 * np.mean(pop <= 10)


def test_baselines_feed_the_metrics() -> None:
    rng = np.random.default_rng(0)
    n_items, n_users = 200, 400
    # each user walks inside one of 10 blocks of 20 items: ItemKNN should beat popularity
    blocks = rng.integers(0, 10, size=n_users)
    histories = [1 + 20 * b + rng.integers(0, 20, size=12) for b in blocks]
    train, recent = [h[:-1] for h in histories], [h[:-1] for h in histories]
    targets = np.array([h[-1] for h in histories])
    exclude = [np.setdiff1d(r, [t]) for r, t in zip(recent, targets)]
    knn = target_ranks(ItemKNN().fit(train, n_items).score(recent), targets, exclude=exclude)
    pop = target_ranks(MostPopular().fit(train, n_items).score(recent), targets, exclude=exclude)
    assert np.mean(knn <= 10) > 2 * np.mean(pop <= 10)


def test_validation() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        MostPopular().score([np.array([1])])
    with pytest.raises(ValueError, match="histories"):
        MostPopular().fit([np.array([1, 9])], N_ITEMS)
    with pytest.raises(ValueError, match="histories"):
        MostPopular().fit([np.array([1.0, 2.0])], N_ITEMS)
    with pytest.raises(ValueError, match="n_items"):
        MostPopular().fit(HISTORIES, 0)
    with pytest.raises(ValueError, match="item_category"):
        PopularInLastCategory().fit(HISTORIES, N_ITEMS, ITEM_CATEGORY[:-1])
    with pytest.raises(ValueError, match="recent"):
        MostPopular().fit(HISTORIES, N_ITEMS).score([np.array([-1])])
    with pytest.raises(ValueError, match="neighbours"):
        ItemKNN(neighbours=0)
    with pytest.raises(ValueError, match="decay"):
        ItemKNN(decay=0.0)
    with pytest.raises(ValueError, match="last_n"):
        ItemKNN().fit(HISTORIES, N_ITEMS).score([np.array([1])], last_n=0)
    with pytest.raises(ValueError, match="last_n"):
        CoPurchase(last_n=0)
    with pytest.raises(TypeError, match="normalise"):
        CoPurchase(normalise="yes")
    with pytest.raises(RuntimeError, match="fit"):
        PersonalFrequency().score([np.array([1])])
