"""Entities: who and what features describe."""
from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A shopper")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A catalogue item")
category = Entity(
    name="category",
    join_keys=["category_id"],
    value_type=ValueType.INT32,
    description="A catalogue category (interest.categories.category_id)",
)
