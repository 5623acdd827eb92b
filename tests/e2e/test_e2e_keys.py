"""Passwords: add a key, list keys, change the password, refuse to remove the key in use."""

from __future__ import annotations

from e2e_support import NEW_PASSWORD, OTHER_PASSWORD, PASSWORD, SV


def test_key_add_list_and_open_with_new_password(repo: SV) -> None:
    added = repo.json("key", "add", env={"STACKVAULT_NEW_PASSWORD": NEW_PASSWORD})["added"]
    keys = repo.json("key", "list")
    assert len(keys) == 2
    assert [k["id"] for k in keys if k["current"]] != [added]
    assert sum(k["current"] for k in keys) == 1
    assert added in {k["id"] for k in keys}
    # the new password opens the repository, and is then the current key
    as_new = repo.json("key", "list", env={"STACKVAULT_PASSWORD": NEW_PASSWORD})
    assert [k["id"] for k in as_new if k["current"]] == [added]
    assert len(repo.json("snapshots", env={"STACKVAULT_PASSWORD": NEW_PASSWORD})) == 2
    # the old one still works too
    assert len(repo.json("snapshots")) == 2


def test_key_add_refuses_an_empty_password(repo: SV) -> None:
    res = repo("key", "add", env={"STACKVAULT_NEW_PASSWORD": ""})
    assert res.rc == 2, str(res)
    assert "empty" in res.err
    assert len(repo.json("key", "list")) == 1


def test_key_passwd_changes_the_password(repo: SV) -> None:
    res = repo.json("key", "passwd", env={"STACKVAULT_NEW_PASSWORD": OTHER_PASSWORD})
    assert set(res) == {"added", "removed"}
    old = repo("snapshots")
    assert old.rc == 12, str(old)
    assert "wrong password" in old.err
    new = repo.json("key", "list", env={"STACKVAULT_PASSWORD": OTHER_PASSWORD})
    assert [k["id"] for k in new] == [res["added"]] and new[0]["current"]


def test_key_remove(repo: SV) -> None:
    current = repo.json("key", "list")[0]["id"]
    added = repo.json("key", "add", env={"STACKVAULT_NEW_PASSWORD": NEW_PASSWORD})["added"]
    res = repo("key", "remove", current[:8])  # the key this command was opened with
    assert res.rc == 2, str(res)
    assert "in use" in res.err
    assert repo.json("key", "remove", added[:10])["removed"] == added[:10]
    gone = repo("snapshots", env={"STACKVAULT_PASSWORD": NEW_PASSWORD})
    assert gone.rc == 12, str(gone)
    assert [k["id"] for k in repo.json("key", "list", env={"STACKVAULT_PASSWORD": PASSWORD})
            ] == [current]
