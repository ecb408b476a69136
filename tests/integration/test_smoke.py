from interfaces.bootstrap import Container


def test_grant_charge_project(container: Container) -> None:
    user = container.users.create("a@example.com", "password1", "Alice")
    container.ledger.grant(user.id, 10_000_000, key="g1", reason="welcome")
    container.ledger.charge(user.id, 250_000, key="c1")
    container.runner.catch_up()
    row = container.queries.balance(user.id)
    assert row is not None
    assert row["balance"] == 9_750_000
