"""Synthetic e-commerce shop with planted interest shifts.

A seeded, deterministic generator of an item catalogue and an event stream in the documented
schemas (``materialize.ingest.schema``), plus the ground truth of which users changed their dominant
category, when, and how.

The model of the shop:
  * Items fall into categories of uneven size. Within a category, item popularity is Zipf-like
    (weight ``1 / rank ** popularity_exponent``). Prices are lognormal around a per-category median.
    Titles and descriptions come from per-category vocabularies, so text embeddings separate them.
  * A user's category preference is Dirichlet weights on 1-3 favourite categories
    (``FAVOURITE_MASS`` of the mass) plus a Dirichlet background over all categories.
  * A user's sessions are a Poisson process over the span (user activity is gamma distributed).
    Sessions of one user never overlap and lie at least ``MIN_SESSION_GAP_SECONDS`` apart. Each
    session draws one category from the user's preference at the session start, and
    ``ON_CATEGORY_VIEW_SHARE`` of its views are in that category; the others follow the preference.
  * Every view may lead on to click -> cart -> purchase of the same item, with decreasing
    probabilities (``FUNNEL_STEP_PROBABILITY``). Click and cart follow right after their view;
    purchases come at the end of the session (checkout), so a purchase always comes after the
    cart and click of the same item in the same session. Gaps within a session are lognormal,
    1 s to ``MAX_GAP_SECONDS``. Sessions derived from 30-minute gaps therefore match
    ``session_id``.
  * Planted shifts: ``shift_fraction`` of users swap the weight of their dominant category with
    that of a category that is not one of their favourites. Switch users swap at ``shift_at``,
    drawn from the middle 40 % of the span. Drift users (``drift_fraction`` of the shifted ones)
    blend linearly from the old preference to the new one over ``drift_days``, centred on ``shift_at``.

Events carry the item's catalogue price on every row (the price shown or paid), and
``session_id`` is ``f"u{user_id}-s{k}"``, where k counts the user's sessions from 0 in time order.
Timestamps have millisecond resolution and lie in ``[end - days, end)``.

Determinism: users are generated in fixed blocks of ``BLOCK_USERS`` users. Each block has its own
random stream, derived from ``(seed, block index)`` with ``numpy.random.SeedSequence``. The same
config therefore gives identical output for any ``users_per_chunk``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from materialize.ingest.schema import EVENT_TYPES

BLOCK_USERS = 1000
"""Users per internal random-stream block; ``users_per_chunk`` must be a multiple of it."""

VIEWS_PER_SESSION_MEAN = 4.0  # views per session are 1 + Poisson(mean - 1) ...
MAX_VIEWS_PER_SESSION = 12  # ... capped here
FUNNEL_STEP_PROBABILITY = (0.3, 0.3, 0.5)  # P(click | view), P(cart | click), P(purchase | cart)
ON_CATEGORY_VIEW_SHARE = 0.8  # views in the session's category; the rest follow the preference
GAP_MEDIAN_SECONDS = (45.0, 8.0, 20.0, 60.0)  # median gap before a view, click, cart, purchase
GAP_SIGMA = 0.8  # lognormal sigma of within-session gaps
MAX_GAP_SECONDS = 900.0  # longest gap within a session
MIN_SESSION_GAP_SECONDS = 31 * 60.0  # shortest gap between two sessions of one user
ACTIVITY_SHAPE = 2.0  # gamma shape of the per-user session count (lower: more heterogeneous)
FAVOURITE_COUNT_PROBABILITY = (0.5, 0.35, 0.15)  # P(1, 2, 3 favourite categories)
FAVOURITE_MASS = 0.85  # preference mass on the favourites; the rest is background
SHIFT_WINDOW = (0.3, 0.7)  # shift_at is uniform in this part of the span
PRICE_SIGMA = 0.5  # lognormal sigma of item prices around the category median
CATEGORY_SIZE_CONCENTRATION = 4.0  # Dirichlet alpha of category sizes (higher: more even)


@dataclass(frozen=True)
class CategoryVocabulary:
    """Words that generate the titles and descriptions of one category."""

    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    features: tuple[str, ...]
    uses: tuple[str, ...]
    median_price: float


CATEGORY_VOCABULARIES: dict[str, CategoryVocabulary] = {
    "electronics": CategoryVocabulary(
        brands=("Voltix", "Nexon", "Auralis", "Quantra", "Pixelon", "Zentro"),
        adjectives=("wireless", "portable", "smart", "compact", "high-resolution", "rechargeable",
                    "bluetooth", "ultra-fast", "noise-cancelling", "digital"),
        nouns=("headphones", "laptop", "smartphone", "tablet", "speaker", "monitor", "smartwatch",
               "camera", "charger", "router"),
        features=("a 4K display", "a 20-hour battery", "USB-C charging", "a fast processor",
                  "Wi-Fi 6", "a touchscreen", "active noise cancellation", "128 GB of storage"),
        uses=("gaming", "streaming movies", "video calls", "working from home",
              "music on the go", "photography"),
        median_price=120.0,
    ),
    "books": CategoryVocabulary(
        brands=("Penwright Press", "Oakleaf Books", "Lantern House", "Inkwell Publishing",
                "Meridian Press", "Quill & Crane"),
        adjectives=("bestselling", "illustrated", "hardcover", "paperback", "award-winning",
                    "gripping", "classic", "annotated", "heartfelt", "thought-provoking"),
        nouns=("novel", "thriller", "biography", "cookbook", "poetry collection", "history book",
               "fantasy saga", "memoir", "mystery novel", "science guide"),
        features=("400 pages", "a foreword by the author", "full-colour illustrations",
                  "a reading group guide", "a detailed index", "maps and timelines",
                  "large print", "a new translation"),
        uses=("a long weekend of reading", "book clubs", "students and teachers",
              "bedtime reading", "curious minds", "readers of every age"),
        median_price=15.0,
    ),
    "fashion": CategoryVocabulary(
        brands=("Vela Atelier", "Northmode", "Corra", "Lune & Co", "Brava Denim", "Stitchwell"),
        adjectives=("slim-fit", "linen", "cotton", "leather", "casual", "elegant", "oversized",
                    "vintage", "waterproof", "tailored"),
        nouns=("jacket", "dress", "jeans", "sneakers", "shirt", "coat", "skirt", "boots",
               "sweater", "handbag"),
        features=("organic cotton fabric", "hidden pockets", "a relaxed cut", "stretch denim",
                  "a silk lining", "reinforced seams", "machine-washable fabric",
                  "a breathable weave"),
        uses=("everyday wear", "office outfits", "evening events", "weekend getaways",
              "cold winter days", "summer festivals"),
        median_price=40.0,
    ),
    "home": CategoryVocabulary(
        brands=("Hearthly", "Nordvik Home", "Casa Lumen", "Driftwood Living", "Maison Ardent",
                "Cozyform"),
        adjectives=("ceramic", "minimalist", "handwoven", "stainless steel", "oak", "cozy",
                    "scented", "modular", "velvet", "nonstick"),
        nouns=("sofa cushion", "table lamp", "bedding set", "cookware set", "rug", "bookshelf",
               "curtain", "vase", "dinner plate set", "candle"),
        features=("a solid oak frame", "dishwasher-safe ceramic", "a blackout lining",
                  "a soft velvet cover", "a nonstick coating", "soy wax", "adjustable shelves",
                  "a warm LED bulb"),
        uses=("the living room", "the bedroom", "family dinners", "a cozy reading corner",
              "a new apartment", "hosting guests"),
        median_price=60.0,
    ),
    "sports": CategoryVocabulary(
        brands=("Stridex", "Peakform", "Velocity Athletics", "Trailcore", "Kinetix",
                "Summit Gear"),
        adjectives=("lightweight", "breathable", "shock-absorbing", "adjustable", "durable",
                    "ergonomic", "high-performance", "grippy", "moisture-wicking", "foldable"),
        nouns=("running shoes", "yoga mat", "dumbbell set", "tennis racket", "cycling helmet",
               "football", "resistance bands", "hiking backpack", "fitness tracker", "jump rope"),
        features=("a cushioned sole", "a non-slip texture", "adjustable weights",
                  "a carbon fibre frame", "reflective details", "quick-dry fabric",
                  "padded straps", "impact protection"),
        uses=("marathon training", "home workouts", "weekend hikes", "team practice",
              "cycling commutes", "strength training"),
        median_price=45.0,
    ),
    "beauty": CategoryVocabulary(
        brands=("Lumiere Skin", "Velvetine", "Purelle", "Rosa Botanica", "Glowlab", "Aurea"),
        adjectives=("hydrating", "fragrance-free", "organic", "vegan", "long-lasting", "matte",
                    "nourishing", "gentle", "brightening", "anti-aging"),
        nouns=("face serum", "moisturiser", "lipstick", "mascara", "shampoo", "foundation",
               "sunscreen", "face mask", "perfume", "nail polish"),
        features=("hyaluronic acid", "vitamin C", "SPF 50", "shea butter",
                  "natural botanical extracts", "a matte finish",
                  "a dermatologist-tested formula", "argan oil"),
        uses=("dry skin", "a daily skincare routine", "evening makeup", "sensitive skin",
              "healthy shiny hair", "summer sun protection"),
        median_price=20.0,
    ),
    "toys": CategoryVocabulary(
        brands=("Playnook", "Tinytown", "Brickwise", "Wondertoy", "Jollyjam", "Kiddo Labs"),
        adjectives=("colourful", "educational", "interactive", "wooden", "plush",
                    "remote-control", "magnetic", "musical", "creative", "collectible"),
        nouns=("building blocks", "jigsaw puzzle", "teddy bear", "toy car", "doll house",
               "board game", "train set", "action figure", "craft kit", "robot kit"),
        features=("500 pieces", "non-toxic paint", "rechargeable batteries", "sound effects",
                  "glow-in-the-dark parts", "easy-grip shapes", "step-by-step instructions",
                  "a storage box"),
        uses=("children aged 3 and up", "family game night", "rainy afternoons",
              "learning through play", "birthday presents", "STEM learning"),
        median_price=25.0,
    ),
    "grocery": CategoryVocabulary(
        brands=("Green Valley", "Harvest Table", "Sunfield", "Mill & Grain", "Fresca",
                "Old Orchard"),
        adjectives=("organic", "gluten-free", "wholegrain", "fair-trade", "roasted", "sugar-free",
                    "fresh", "spicy", "creamy", "low-fat"),
        nouns=("coffee beans", "olive oil", "pasta", "granola", "dark chocolate", "green tea",
               "peanut butter", "honey", "basmati rice", "tomato sauce"),
        features=("single-origin beans", "cold-pressed olives", "no added sugar",
                  "a resealable pack", "70 percent cocoa", "high protein",
                  "sustainably farmed ingredients", "a rich aroma"),
        uses=("healthy breakfasts", "quick weeknight dinners", "the morning espresso",
              "baking at home", "snacking on the go", "a well-stocked pantry"),
        median_price=6.0,
    ),
    "garden": CategoryVocabulary(
        brands=("Greenthumb", "Bloomfield", "Terrana", "Rootwise", "Meadowline", "Sproutly"),
        adjectives=("weatherproof", "galvanised", "self-watering", "solar-powered", "cordless",
                    "biodegradable", "heavy-duty", "raised", "frost-resistant", "telescopic"),
        nouns=("lawn mower", "garden hose", "planter", "pruning shears", "seed kit",
               "compost bin", "wheelbarrow", "hedge trimmer", "bird feeder", "patio heater"),
        features=("a lithium battery", "rust-proof steel blades", "a drip irrigation system",
                  "UV-stabilised plastic", "organic seeds", "an adjustable nozzle",
                  "a 40 litre capacity", "solar lights"),
        uses=("vegetable gardens", "lawn care", "balcony plants", "growing herbs", "the patio",
              "spring planting"),
        median_price=35.0,
    ),
    "automotive": CategoryVocabulary(
        brands=("Motorline", "Torqon", "Roadmaster", "Axelbright", "Carvex", "Pitstop Pro"),
        adjectives=("heavy-duty", "universal-fit", "synthetic", "LED", "all-weather", "portable",
                    "digital", "high-pressure", "anti-glare", "magnetic"),
        nouns=("car battery", "motor oil", "tyre inflator", "dash cam", "wiper blades",
               "seat covers", "jump starter", "car charger", "floor mats", "socket wrench set"),
        features=("a 12 volt output", "a full synthetic formula", "night vision recording",
                  "a digital pressure gauge", "water-resistant material", "easy installation",
                  "a 1000 amp peak current", "GPS tracking"),
        uses=("road trips", "winter driving", "daily commuting", "roadside emergencies",
              "vehicle maintenance", "the garage"),
        median_price=50.0,
    ),
    "music": CategoryVocabulary(
        brands=("Harmonia", "Fretcraft", "Soundwave Records", "Tempo Works", "Resona",
                "Bluenote Audio"),
        adjectives=("acoustic", "electric", "vinyl", "remastered", "analog", "live", "classical",
                    "handcrafted", "studio-grade", "limited-edition"),
        nouns=("guitar", "vinyl record", "keyboard", "drum kit", "ukulele", "microphone",
               "violin", "album", "guitar strings", "audio interface"),
        features=("a solid spruce top", "88 weighted keys", "180 gram vinyl",
                  "a deluxe gatefold sleeve", "nickel-wound strings", "a cardioid pickup",
                  "a hardshell case", "bonus live tracks"),
        uses=("beginner musicians", "home recording", "live performance", "record collectors",
              "jazz lovers", "band rehearsals"),
        median_price=18.0,
    ),
    "pets": CategoryVocabulary(
        brands=("Pawsome", "Whiskerly", "Tailwag", "Furbest", "Petnest", "Barkley & Co"),
        adjectives=("grain-free", "chewable", "orthopedic", "washable", "interactive",
                    "hypoallergenic", "durable", "reflective", "calming", "natural"),
        nouns=("dog food", "cat litter", "dog bed", "cat tree", "leash", "chew toy", "aquarium",
               "bird cage", "pet shampoo", "scratching post"),
        features=("real chicken protein", "odour control", "memory foam",
                  "a sisal scratching surface", "a padded handle", "added omega-3",
                  "a quick-release buckle", "a filtration system"),
        uses=("large dogs", "indoor cats", "puppies", "senior pets", "daily walks",
              "small birds"),
        median_price=22.0,
    ),
    "office": CategoryVocabulary(
        brands=("Deskwise", "Paperloft", "Inkline", "Officio", "Clipmark", "Workbench"),
        adjectives=("ergonomic", "refillable", "adjustable", "recycled", "spiral-bound",
                    "wireless", "stackable", "fireproof", "lined", "executive"),
        nouns=("notebook", "office chair", "desk organiser", "stapler", "fountain pen",
               "printer paper", "filing cabinet", "whiteboard", "label maker", "desk lamp"),
        features=("lumbar support", "acid-free paper", "a metal clip", "lockable drawers",
                  "500 sheets", "a dry-erase surface", "height adjustment", "smooth ink flow"),
        uses=("the home office", "meetings", "students", "note taking",
              "organising paperwork", "the classroom"),
        median_price=12.0,
    ),
    "baby": CategoryVocabulary(
        brands=("Little Sprout", "Cuddlebug", "Nestling", "Babybloom", "Tinysteps",
                "Lullaby Lane"),
        adjectives=("soft", "organic cotton", "BPA-free", "hypoallergenic", "foldable",
                    "lightweight", "washable", "gentle", "breathable", "convertible"),
        nouns=("stroller", "baby bottle", "crib mattress", "diaper pack", "baby carrier",
               "high chair", "swaddle blanket", "pacifier", "baby monitor", "changing mat"),
        features=("a five-point harness", "anti-colic valves", "a waterproof cover",
                  "night vision", "a one-hand fold", "a breathable mesh", "a wetness indicator",
                  "easy-clean fabric"),
        uses=("newborns", "travel with baby", "sleep time", "feeding time", "toddlers",
              "new parents"),
        median_price=30.0,
    ),
}
"""Built-in categories in the order they are used: ``n_categories`` takes the first ones."""


def start_of_today() -> pd.Timestamp:
    """The current UTC day's midnight, a shop's default ``end``: its newest daily features
    are then fresh wherever and whenever it is loaded (the daily feature views' ttl is 60
    days, and the online store hides older values)."""
    return pd.Timestamp.now(tz="UTC").normalize()


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, time span, shift mix and seed of a synthetic shop.

    Attributes:
        n_users: Users, with ids 1..n_users.
        n_items: Items, with ids 1..n_items.
        n_categories: Categories, the first ones of ``CATEGORY_VOCABULARIES``.
        days: Length of the event span in days; events lie in ``[end - days, end)``.
        end: Exclusive end of the span (timezone-aware); default ``start_of_today()``. Moving
            it by whole days moves every timestamp and changes nothing else.
        sessions_per_user_mean: Mean sessions per user over the span (>= 1).
        shift_fraction: Share of users with a planted interest shift.
        drift_fraction: Share of the shifted users whose shift is a gradual drift.
        drift_days: Length of a drift in days, centred on ``shift_at``.
        popularity_exponent: Zipf exponent of item popularity within a category.
        seed: Root seed of every random stream.
        users_per_chunk: Users per DataFrame yielded by ``SyntheticShop.events``.
    """

    n_users: int = 2000
    n_items: int = 3000
    n_categories: int = 12
    days: int = 90
    end: pd.Timestamp = dataclasses.field(default_factory=start_of_today)
    sessions_per_user_mean: float = 20.0
    shift_fraction: float = 0.5
    drift_fraction: float = 0.3
    drift_days: float = 14.0
    popularity_exponent: float = 1.0
    seed: int = 7
    users_per_chunk: int = 5000

    def __post_init__(self) -> None:
        if self.n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {self.n_users}")
        if not 2 <= self.n_categories <= len(CATEGORY_VOCABULARIES):
            raise ValueError(
                f"n_categories must be in [2, {len(CATEGORY_VOCABULARIES)}], got {self.n_categories}"
            )
        if self.n_items < self.n_categories:
            raise ValueError(f"n_items ({self.n_items}) must be >= n_categories ({self.n_categories})")
        if self.days <= 0:
            raise ValueError(f"days must be > 0, got {self.days}")
        if self.end.tzinfo is None:
            raise ValueError(f"end must be timezone-aware, got {self.end}")
        if self.sessions_per_user_mean < 1:
            raise ValueError(f"sessions_per_user_mean must be >= 1, got {self.sessions_per_user_mean}")
        for name in ("shift_fraction", "drift_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        max_drift_days = 2 * SHIFT_WINDOW[0] * self.days
        if not 0 < self.drift_days <= max_drift_days:
            raise ValueError(f"drift_days must be in (0, {max_drift_days:g}], got {self.drift_days}")
        if self.users_per_chunk < BLOCK_USERS or self.users_per_chunk % BLOCK_USERS:
            raise ValueError(
                f"users_per_chunk must be a positive multiple of {BLOCK_USERS}, got {self.users_per_chunk}"
            )

    @property
    def expected_events_per_user(self) -> float:
        """Expected events of one user, from the session, view and funnel model."""
        views_mean = VIEWS_PER_SESSION_MEAN - 1
        capped_extra = MAX_VIEWS_PER_SESSION - 1
        pmf = [math.exp(-views_mean) * views_mean**k / math.factorial(k) for k in range(capped_extra)]
        capped_tail = MAX_VIEWS_PER_SESSION * (1 - sum(pmf))
        views_per_session = sum((1 + k) * p for k, p in enumerate(pmf)) + capped_tail
        events_per_view = 1 + sum(np.cumprod(FUNNEL_STEP_PROBABILITY))
        return self.sessions_per_user_mean * views_per_session * float(events_per_view)

    def to_json(self) -> dict:
        """Every field as JSON values (``end`` as ISO 8601); ``from_json`` inverts it."""
        values = dataclasses.asdict(self)
        values["end"] = self.end.isoformat()
        return values

    @classmethod
    def from_json(cls, values: dict) -> SyntheticConfig:
        return cls(**{**values, "end": pd.Timestamp(values["end"])})

    @classmethod
    def for_events(cls, target_events: int, **overrides) -> SyntheticConfig:
        """Config with ``n_users`` chosen so that about ``target_events`` events are generated.

        Args:
            target_events: Wanted total number of events (typically met within 1 %).
            **overrides: Any other config field; an ``n_users`` given here is replaced.
        """
        base = cls(**overrides)
        n_users = max(1, round(target_events / base.expected_events_per_user))
        return dataclasses.replace(base, n_users=n_users)


@dataclass(frozen=True)
class _UserBlock:
    """Profiles of one block of users; times are seconds since the span start."""

    user_id: np.ndarray  # (n,) int64
    activity: np.ndarray  # (n,) float64, mean sessions beyond the first
    preference_before: np.ndarray  # (n, n_categories) float64, rows sum to 1
    preference_after: np.ndarray  # (n, n_categories) float64; equal to before when not shifted
    shifted: np.ndarray  # (n,) bool
    drift: np.ndarray  # (n,) bool, subset of shifted
    from_category: np.ndarray  # (n,) int64, dominant category before the shift
    to_category: np.ndarray  # (n,) int64, dominant category after the shift
    shift_at: np.ndarray  # (n,) float64 seconds, whole seconds
    drift_start: np.ndarray  # (n,) float64 seconds; equals shift_at for a switch
    drift_end: np.ndarray  # (n,) float64 seconds; equals shift_at for a switch

    def new_preference_weight(self, users: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """Weight in [0, 1] of ``preference_after`` for the given users at the given times."""
        start, end = self.drift_start[users], self.drift_end[users]
        ramp = np.clip((seconds - start) / np.maximum(end - start, 1.0), 0.0, 1.0)
        return np.where(end > start, ramp, (seconds >= start).astype(np.float64))


class SyntheticShop:
    """Catalogue, event stream and interest-shift ground truth of one ``SyntheticConfig``."""

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.categories: tuple[str, ...] = tuple(CATEGORY_VOCABULARIES)[: config.n_categories]
        self._end = config.end.tz_convert("UTC")
        self._start = self._end - pd.Timedelta(days=config.days)
        self._span_seconds = config.days * 86400.0
        self._build_catalogue()

    # ----------------------------------------------------------------------------- catalogue
    def _build_catalogue(self) -> None:
        config = self.config
        rng = self._rng(0)
        n_categories, n_items = config.n_categories, config.n_items
        self._category_share = rng.dirichlet(np.full(n_categories, CATEGORY_SIZE_CONCENTRATION))
        extra_items = rng.choice(n_categories, n_items - n_categories, p=self._category_share)
        category = np.concatenate([np.arange(n_categories), extra_items])  # every category non-empty
        category = rng.permutation(category)
        popularity_rank = np.empty(n_items, dtype=np.int64)
        for code in range(n_categories):
            members = np.flatnonzero(category == code)
            popularity_rank[members] = rng.permutation(len(members))
        medians = np.array([CATEGORY_VOCABULARIES[name].median_price for name in self.categories])
        price = np.round(medians[category] * np.exp(PRICE_SIGMA * rng.standard_normal(n_items)), 2)
        titles, descriptions = self._item_texts(rng, category)

        self._item_price = price  # (n_items,) float64, indexed by item id - 1
        self._items = pd.DataFrame(
            {
                "item_id": np.arange(1, n_items + 1, dtype=np.int64),
                "category": np.array(self.categories, dtype=object)[category],
                "title": titles,
                "description": descriptions,
                "price": price.astype(np.float64),
            }
        )

        # Sampling table: items sorted by (category, rank); key = category code + cumulative
        # within-category popularity in (0, 1], so one searchsorted samples any category.
        order = np.lexsort((popularity_rank, category))
        weight = 1.0 / (popularity_rank[order] + 1.0) ** config.popularity_exponent
        items_per_category = np.bincount(category, minlength=n_categories)
        category_end = np.cumsum(items_per_category)
        category_start = category_end - items_per_category
        cumulative = np.cumsum(weight)
        before_category = cumulative[category_start] - weight[category_start]
        within = cumulative - np.repeat(before_category, items_per_category)
        total = np.repeat(within[category_end - 1], items_per_category)
        self._sampling_key = category[order] + within / total
        self._item_category = category  # (n_items,) category codes, indexed by item id - 1
        self._item_share = np.empty(n_items)  # P(item | its category), indexed by item id - 1
        self._item_share[order] = weight / total
        self._sampling_item_index = order
        self._category_end = category_end

    def _item_texts(self, rng: np.random.Generator, category: np.ndarray) -> tuple[list[str], list[str]]:
        """Title and a three-sentence description per item from its category vocabulary."""
        n_items = len(category)
        picks = rng.integers(0, 1 << 30, size=(n_items, 8))
        extra_sentences = np.argsort(rng.random((n_items, 4)), axis=1)[:, :2]
        titles, descriptions = [], []
        for code, pick, extra in zip(category.tolist(), picks.tolist(), extra_sentences.tolist()):
            name = self.categories[code]
            vocab = CATEGORY_VOCABULARIES[name]
            brand = vocab.brands[pick[0] % len(vocab.brands)]
            adjective = vocab.adjectives[pick[1] % len(vocab.adjectives)]
            adjective2 = vocab.adjectives[pick[2] % len(vocab.adjectives)]
            noun = vocab.nouns[pick[3] % len(vocab.nouns)]
            feature = vocab.features[pick[4] % len(vocab.features)]
            feature2 = vocab.features[pick[5] % len(vocab.features)]
            use = vocab.uses[pick[6] % len(vocab.uses)]
            use2 = vocab.uses[pick[7] % len(vocab.uses)]
            optional = (
                f"Made for {use}.",
                f"It also offers {feature2}.",
                f"{_with_article(adjective2).capitalize()} pick from our {name} range.",
                f"Popular with shoppers looking for {use2}.",
            )
            titles.append(f"{brand} {adjective.title()} {noun.title()}")
            opening = f"The {brand} {adjective} {noun} comes with {feature}."
            descriptions.append(" ".join([opening, *(optional[i] for i in extra)]))
        return titles, descriptions

    def _sample_items(self, category: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """Item indices (id - 1) drawn by popularity within the given categories."""
        position = np.searchsorted(self._sampling_key, category + uniform, side="right")
        position = np.minimum(position, self._category_end[category] - 1)
        return self._sampling_item_index[position]

    @property
    def start(self) -> pd.Timestamp:
        """The start of the span (UTC); events lie in ``[start, config.end)``."""
        return self._start

    @property
    def span_seconds(self) -> float:
        """The span's length in seconds."""
        return self._span_seconds

    @property
    def category_share(self) -> np.ndarray:
        """(n_categories,) each category's expected share of the catalogue; the Gumbel
        top-k of a user's favourites is weighted by it."""
        return self._category_share

    def item_probabilities(self, category_probabilities: np.ndarray) -> np.ndarray:
        """P(item) of a view whose category follows ``category_probabilities`` (n,
        n_categories), the item then drawn by popularity within it as ``_sample_items``
        does: (n, n_items) float64, columns by item id - 1."""
        return np.asarray(category_probabilities)[:, self._item_category] * self._item_share

    def items(self) -> pd.DataFrame:
        """The catalogue: item_id int64 (1..n), category, title, description str, price float64."""
        return self._items.copy()

    # --------------------------------------------------------------------------------- users
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=key))

    def _n_blocks(self) -> int:
        return -(-self.config.n_users // BLOCK_USERS)

    def _user_block(self, block: int) -> _UserBlock:
        config = self.config
        rng = self._rng(1, block)
        first_user = block * BLOCK_USERS + 1
        user_id = np.arange(first_user, min(first_user + BLOCK_USERS, config.n_users + 1), dtype=np.int64)
        n, n_categories = len(user_id), config.n_categories
        rows = np.arange(n)

        activity = rng.gamma(ACTIVITY_SHAPE, (config.sessions_per_user_mean - 1) / ACTIVITY_SHAPE, n)
        favourite_count = 1 + rng.choice(len(FAVOURITE_COUNT_PROBABILITY), n, p=FAVOURITE_COUNT_PROBABILITY)
        n_favourites = np.minimum(favourite_count, n_categories - 1)
        # Gumbel top-k: categories ranked by a draw weighted by category size; the first
        # n_favourites are the favourites.
        gumbel = np.log(self._category_share) - np.log(-np.log(rng.random((n, n_categories))))
        ranked = np.argsort(-gumbel, axis=1)
        is_favourite_rank = np.arange(n_categories) < n_favourites[:, None]
        favourite_weight = rng.gamma(2.0, size=(n, n_categories)) * is_favourite_rank
        favourite_weight /= favourite_weight.sum(axis=1, keepdims=True)
        background = rng.dirichlet(np.ones(n_categories), n)
        preference = (1 - FAVOURITE_MASS) * background
        preference[rows[:, None], ranked] += FAVOURITE_MASS * favourite_weight

        shifted = rng.random(n) < config.shift_fraction
        drift = shifted & (rng.random(n) < config.drift_fraction)
        from_category = preference.argmax(axis=1)
        non_favourite = n_favourites + (rng.random(n) * (n_categories - n_favourites)).astype(np.int64)
        to_category = np.where(shifted, ranked[rows, non_favourite], from_category)
        preference_after = preference.copy()
        preference_after[rows, from_category] = preference[rows, to_category]
        preference_after[rows, to_category] = preference[rows, from_category]

        low, high = SHIFT_WINDOW
        shift_at = np.round(self._span_seconds * (low + (high - low) * rng.random(n)))
        half_drift = np.where(drift, config.drift_days * 86400.0 / 2, 0.0)
        return _UserBlock(
            user_id=user_id,
            activity=activity,
            preference_before=preference,
            preference_after=preference_after,
            shifted=shifted,
            drift=drift,
            from_category=from_category,
            to_category=to_category,
            shift_at=shift_at,
            drift_start=shift_at - half_drift,
            drift_end=shift_at + half_drift,
        )

    def interest_shifts(self) -> pd.DataFrame:
        """Ground truth of the planted shifts, one row per shifted user (others are absent).

        Returns:
            user_id int64; shift_at, drift_start, drift_end datetime64[ns, UTC] (a switch has
            all three equal, a drift has shift_at at its midpoint); from_category and
            to_category str (dominant category before and after); kind "switch" or "drift".
        """
        frames = []
        names = np.array(self.categories, dtype=object)
        for block in range(self._n_blocks()):
            users = self._user_block(block)
            keep = users.shifted
            frames.append(
                pd.DataFrame(
                    {
                        "user_id": users.user_id[keep],
                        "shift_at": self._timestamps(users.shift_at[keep]),
                        "drift_start": self._timestamps(users.drift_start[keep]),
                        "drift_end": self._timestamps(users.drift_end[keep]),
                        "from_category": names[users.from_category[keep]],
                        "to_category": names[users.to_category[keep]],
                        "kind": np.where(users.drift[keep], "drift", "switch").astype(object),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def category_preference(self, user_id: np.ndarray, at: pd.Series) -> np.ndarray:
        """Each user's true category preference at the given time, as the generator draws it.

        Args:
            user_id: (n,) int, ids in 1..n_users.
            at: (n,) datetime64[ns, UTC] times (millisecond resolution, as events carry).

        Returns:
            (n, n_categories) float64, rows sum to 1; columns in ``categories`` order.
        """
        user_id = np.asarray(user_id, dtype=np.int64)
        if len(user_id) and not (user_id.min() >= 1 and user_id.max() <= self.config.n_users):
            raise ValueError(f"user ids must lie in [1, {self.config.n_users}]")
        # Whole milliseconds since the span start, then seconds: exact for a switch at a
        # whole second (``shift_at``), as in ``_timestamps``.
        milliseconds = (pd.DatetimeIndex(pd.to_datetime(at, utc=True)).asi8 - self._start.value) // 1_000_000
        seconds = milliseconds / 1e3
        out = np.empty((len(user_id), self.config.n_categories))
        block_of = (user_id - 1) // BLOCK_USERS
        for block in np.unique(block_of):
            rows = np.flatnonzero(block_of == block)
            users = self._user_block(int(block))
            index = user_id[rows] - users.user_id[0]
            weight_after = users.new_preference_weight(index, seconds[rows])[:, None]
            out[rows] = (1 - weight_after) * users.preference_before[index] + weight_after * users.preference_after[index]
        return out

    # -------------------------------------------------------------------------------- events
    def events(self) -> Iterator[pd.DataFrame]:
        """Event chunks of ``users_per_chunk`` users each, sorted by user and time.

        Yields:
            DataFrame with user_id, item_id int64; event_type str (``EVENT_TYPES``);
            event_timestamp datetime64[ns, UTC]; price float64 (catalogue price, every row);
            session_id str.
        """
        blocks_per_chunk = self.config.users_per_chunk // BLOCK_USERS
        for first_block in range(0, self._n_blocks(), blocks_per_chunk):
            blocks = range(first_block, min(first_block + blocks_per_chunk, self._n_blocks()))
            parts = [self._block_events(block) for block in blocks]
            columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
            yield pd.DataFrame(
                {
                    "user_id": columns["user_id"],
                    "item_id": columns["item_index"] + 1,
                    "event_type": np.array(EVENT_TYPES, dtype=object)[columns["stage"]],
                    "event_timestamp": self._timestamps(columns["seconds"]),
                    "price": self._item_price[columns["item_index"]],
                    "session_id": columns["session_id"],
                }
            )

    def _block_events(self, block: int) -> dict[str, np.ndarray]:
        """Event columns of one user block as arrays, seconds since the span start."""
        users = self._user_block(block)
        rng = self._rng(2, block)
        span = self._span_seconds

        # Sessions, views per session and the funnel depth of every view.
        sessions_per_user = 1 + rng.poisson(users.activity)
        session_user = np.repeat(np.arange(len(users.user_id)), sessions_per_user)
        n_sessions = len(session_user)
        views_per_session = np.minimum(
            1 + rng.poisson(VIEWS_PER_SESSION_MEAN - 1, n_sessions), MAX_VIEWS_PER_SESSION
        )
        view_session = np.repeat(np.arange(n_sessions), views_per_session)
        n_views = len(view_session)
        view_position = _position_in_group(views_per_session)
        funnel_steps = np.cumprod(rng.random((n_views, 3)) < FUNNEL_STEP_PROBABILITY, axis=1).sum(axis=1)

        # Rows: view, click, cart right after each other; purchases at checkout (session end).
        events_per_view = 1 + funnel_steps
        row_view = np.repeat(np.arange(n_views), events_per_view)
        row_stage = _position_in_group(events_per_view)  # 0 view, 1 click, 2 cart, 3 purchase
        checkout = row_stage == EVENT_TYPES.index("purchase")
        order_in_session = view_position[row_view] + checkout * MAX_VIEWS_PER_SESSION
        sort_key = (view_session[row_view] * (2 * MAX_VIEWS_PER_SESSION) + order_in_session) * 4 + row_stage
        order = np.argsort(sort_key, kind="stable")
        row_view, row_stage = row_view[order], row_stage[order]
        row_session = view_session[row_view]

        # Offsets of rows from their session start, and session durations.
        rows_per_session = np.bincount(row_session, minlength=n_sessions)
        session_first_row = _group_start(rows_per_session)
        log_gap = np.log(GAP_MEDIAN_SECONDS)[row_stage] + GAP_SIGMA * rng.standard_normal(len(row_stage))
        gap = np.clip(np.exp(log_gap), 1.0, MAX_GAP_SECONDS)
        gap[session_first_row] = 0.0
        cumulative_gap = np.cumsum(gap)
        row_offset = cumulative_gap - np.repeat(cumulative_gap[session_first_row], rows_per_session)
        duration = row_offset[session_first_row + rows_per_session - 1]

        # Session starts: uniform, sorted within user, then pushed so that each starts at
        # least MIN_SESSION_GAP_SECONDS after the previous one ends:
        # start_i = before_i + running max over the user's j <= i of (raw_j - before_j).
        raw_start = rng.random(n_sessions) * span
        raw_start = raw_start[np.lexsort((raw_start, session_user))]
        occupied = duration + MIN_SESSION_GAP_SECONDS
        before = np.cumsum(occupied) - occupied
        before -= np.repeat(before[_group_start(sessions_per_user)], sessions_per_user)
        lift = session_user * (span + before.max() + 1.0)  # keeps the running max per user
        start = before + np.maximum.accumulate(raw_start - before + lift) - lift
        session_kept = start + duration < span  # drops a (rare) suffix of a user's sessions

        # Session category from the preference at the session start; views mostly follow it.
        weight_after = users.new_preference_weight(session_user, start)[:, None]
        preference = (
            (1 - weight_after) * users.preference_before[session_user]
            + weight_after * users.preference_after[session_user]
        )
        cumulative_preference = np.cumsum(preference, axis=1)
        session_category = _sample_rows(cumulative_preference, rng.random(n_sessions))
        other_category = _sample_rows(cumulative_preference[view_session], rng.random(n_views))
        on_category = rng.random(n_views) < ON_CATEGORY_VIEW_SHARE
        view_category = np.where(on_category, session_category[view_session], other_category)
        view_item = self._sample_items(view_category, rng.random(n_views))

        session_user_id = users.user_id[session_user]
        kept_user_id = session_user_id[session_kept].tolist()
        kept_rank = _position_in_group(sessions_per_user)[session_kept].tolist()
        session_id = np.array(
            [f"u{user}-s{rank}" for user, rank in zip(kept_user_id, kept_rank)], dtype=object
        )
        session_index = np.cumsum(session_kept) - 1  # position among kept sessions
        row_kept = session_kept[row_session]
        kept_session = row_session[row_kept]
        return {
            "user_id": session_user_id[kept_session],
            "item_index": view_item[row_view[row_kept]],
            "stage": row_stage[row_kept],
            "seconds": start[kept_session] + row_offset[row_kept],
            "session_id": session_id[session_index[kept_session]],
        }

    def _timestamps(self, seconds: np.ndarray) -> pd.Series:
        """Seconds since the span start as datetime64[ns, UTC], truncated to milliseconds."""
        nanoseconds = self._start.value + np.floor(seconds * 1e3).astype(np.int64) * 1_000_000
        return pd.Series(nanoseconds.view("datetime64[ns]")).dt.tz_localize("UTC")


def _group_start(counts: np.ndarray) -> np.ndarray:
    """Index of the first element of each consecutive group of the given sizes."""
    return np.cumsum(counts) - counts


def _position_in_group(counts: np.ndarray) -> np.ndarray:
    """Position of every element within its consecutive group (0, 1, ..), groups of the given sizes."""
    return np.arange(counts.sum()) - np.repeat(_group_start(counts), counts)


def _sample_rows(cumulative: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Index drawn from each row's cumulative weights (rows, n) given uniforms (rows,)."""
    drawn = (cumulative < (uniform * cumulative[:, -1])[:, None]).sum(axis=1)
    return np.minimum(drawn, cumulative.shape[1] - 1)


def _with_article(word: str) -> str:
    """``word`` preceded by "a" or "an"."""
    return f"{'an' if word[0].lower() in 'aeiou' else 'a'} {word}"
