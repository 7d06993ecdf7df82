from model.bundle import Bundle


def test_small_bundle_loads_and_predicts(small_bundle: Bundle) -> None:
    movie = str(small_bundle.catalog.ids[0])
    out = small_bundle.predict({"id": "1", "rated": [movie]}, [{"id": movie}])
    low, high = small_bundle.rating_range
    assert out.shape == (1,) and low <= out[0] <= high
