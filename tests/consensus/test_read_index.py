"""ReadIndex bookkeeping (raftreg/consensus/read_index.py), pure, and its use by the raft
member (`_Fsm`): followers echo the leader's read round and forward reads to the leader."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from raftreg.consensus.read_index import ReadIndex
from tests.consensus.follower_harness import Follower, term1_log


class Readers:
    """Reader callbacks that record how each one was called back (exactly once)."""

    def __init__(self) -> None:
        self.outcomes: dict[int, str | None] = {}
        self._n = 0

    def new(self) -> Any:
        self._n += 1
        k = self._n

        def done(error: str | None) -> None:
            assert k not in self.outcomes, f"reader {k} called back twice"
            self.outcomes[k] = error

        done.k = k  # type: ignore[attr-defined]
        return done

    def served(self) -> set[int]:
        return {k for k, e in self.outcomes.items() if e is None}


def call(failed: list[tuple[Any, str]]) -> None:
    for cb, why in failed:
        cb(why)


def serve(ri: ReadIndex, last_applied: int) -> None:
    for cb in ri.applied(last_applied):
        cb(None)


def test_a_single_member_confirms_at_once_and_serves_once_applied() -> None:
    ri, rs = ReadIndex(), Readers()
    ri.start(index=7, term=2, readers=[rs.new(), rs.new()])
    call(ri.confirm([], term=2))
    serve(ri, 6)
    assert rs.outcomes == {}
    serve(ri, 7)
    assert rs.served() == {1, 2}
    assert not ri.busy


def test_three_members_need_one_echo_of_the_round_or_later() -> None:
    ri, rs = ReadIndex(), Readers()
    s1 = ri.start(5, 1, [rs.new()])
    s2 = ri.start(6, 1, [rs.new()])
    call(ri.confirm(["b", "c"], 1))
    serve(ri, 10)
    assert rs.outcomes == {}, "no echo yet: nothing is confirmed"
    ri.echoed("b", s1)
    call(ri.confirm(["b", "c"], 1))
    serve(ri, 10)
    assert rs.served() == {1}, "an echo of round 1 does not confirm round 2"
    ri.echoed("c", s2)
    call(ri.confirm(["b", "c"], 1))
    serve(ri, 10)
    assert rs.served() == {1, 2}


def test_five_members_need_two_echoes() -> None:
    ri, rs = ReadIndex(), Readers()
    s = ri.start(3, 4, [rs.new()])
    voters = ["b", "c", "d", "e"]
    ri.echoed("b", s)
    ri.echoed("b", s)  # the same voter twice is still one
    call(ri.confirm(voters, 4))
    serve(ri, 3)
    assert rs.outcomes == {}
    ri.echoed("e", s + 5)  # a later round's echo covers this one
    call(ri.confirm(voters, 4))
    serve(ri, 3)
    assert rs.served() == {1}


def test_a_round_of_an_earlier_term_fails_and_step_down_fails_the_rest() -> None:
    ri, rs = ReadIndex(), Readers()
    ri.start(3, 1, [rs.new()])
    s = ri.start(4, 2, [rs.new()])
    ri.echoed("b", s)
    call(ri.confirm(["b", "c"], 2))
    assert rs.outcomes.get(1) is not None and "term" in str(rs.outcomes[1])
    ri.start(5, 2, [rs.new()])
    call(ri.step_down("lost"))
    assert rs.outcomes[3] == "lost"
    # echoes do not survive a step-down: a round of the next leadership needs its own
    s2 = ri.start(6, 3, [rs.new()])
    assert s2 > s
    call(ri.confirm(["b", "c"], 3))
    serve(ri, 100)
    assert 4 not in rs.outcomes


def test_forwarded_reads_wait_for_the_answer_then_the_local_apply() -> None:
    ri, rs = ReadIndex(), Readers()
    a = ri.forward("L", now=0.0, readers=[rs.new()])
    b = ri.forward("L", now=0.0, readers=[rs.new()])
    c = ri.forward("L", now=0.0, readers=[rs.new()])
    call(ri.answered(a, 12, None))
    call(ri.answered(b, None, "not the leader"))
    call(ri.answered(b, 12, None))  # a duplicate or late answer is nobody's
    serve(ri, 11)
    assert rs.outcomes == {2: "not the leader"}
    serve(ri, 12)
    assert rs.outcomes == {1: None, 2: "not the leader"}
    call(ri.expire_forwards("L", now=0.5, max_age=1.0))
    assert 3 not in rs.outcomes
    call(ri.expire_forwards("L", now=1.5, max_age=1.0))
    assert "within" in str(rs.outcomes[3])
    assert ri.answered(c, 1, None) == []
    d = ri.forward("L", now=2.0, readers=[rs.new()])
    call(ri.expire_forwards("M", now=2.0, max_age=1.0))
    assert "leader changed" in str(rs.outcomes[4])
    assert ri.answered(d, 1, None) == []


def test_fail_all_reaches_every_stage() -> None:
    ri, rs = ReadIndex(), Readers()
    ri.start(9, 1, [rs.new()])  # unconfirmed
    ri.start(9, 1, [rs.new()])
    call(ri.confirm([], 1))  # both confirmed, waiting for the apply
    ri.start(10, 1, [rs.new()])  # unconfirmed (confirm not called again)
    ri.forward("L", 0.0, [rs.new()])
    call(ri.fail_all("down"))
    assert rs.outcomes == {1: "down", 2: "down", 3: "down", 4: "down"}
    assert not ri.busy


@settings(max_examples=300, deadline=None)
@given(
    n_others=st.integers(0, 4),
    ops=st.lists(st.one_of(
        st.tuples(st.just("start")),
        st.tuples(st.just("echo"), st.integers(0, 3), st.integers(0, 8)),
        st.tuples(st.just("confirm")),
    ), max_size=40),
)
def test_a_round_is_served_only_after_a_majority_echoed_it(
    n_others: int, ops: list[tuple[Any, ...]]
) -> None:
    voters = [f"v{i}" for i in range(n_others)]
    ri, rs = ReadIndex(), Readers()
    seq_of: dict[int, int] = {}
    best: dict[str, int] = {}
    for op in ops:
        if op[0] == "start":
            r = rs.new()
            seq_of[r.k] = ri.start(1, 1, [r])
        elif op[0] == "echo" and voters:
            v = voters[op[1] % len(voters)]
            seq = min(op[2], ri.seq)  # a follower echoes only what was sent
            ri.echoed(v, seq)
            best[v] = max(best.get(v, 0), seq)
        else:
            call(ri.confirm(voters, 1))
            serve(ri, 1)
    need = (n_others + 1) // 2
    for k in rs.served():
        echoes = sum(1 for v in voters if best.get(v, 0) >= seq_of[k])
        assert echoes >= need
    call(ri.confirm(voters, 1))
    serve(ri, 1)
    for k, seq in seq_of.items():
        echoes = sum(1 for v in voters if best.get(v, 0) >= seq)
        assert (k in rs.served()) == (echoes >= need)


# ------------------------------------------------------------------------ the raft member


def test_a_follower_echoes_the_read_round_of_every_append(f: Follower) -> None:
    term1_log(f)
    plain = f.ae(8, 1, [], 7, 1)
    assert plain is not None and "read_seq" not in plain
    n = len(f.sent)
    f.fsm._SyncObj__onMessageReceived(f.leader, {
        "type": "append_entries", "term": 1, "commit_index": 7, "entries": [],
        "prevLogIdx": 8, "prevLogTerm": 1, "read_seq": 42})
    assert f.sent[n][1]["read_seq"] == 42 and f.sent[n][1]["success"]
    f.fsm._SyncObj__onMessageReceived(f.leader, {
        "type": "append_entries", "term": 1, "commit_index": 7, "entries": [],
        "prevLogIdx": 30, "prevLogTerm": 1, "read_seq": 43})  # a mismatch still echoes
    assert f.sent[-1][1]["read_seq"] == 43 and not f.sent[-1][1]["success"]
    again = f.ae(8, 1, [], 7, 1)
    assert again is not None and "read_seq" not in again, "the echo is not sticky"


def test_a_follower_refuses_to_give_a_read_index(f: Follower) -> None:
    term1_log(f)
    f.fsm._SyncObj__onMessageReceived(f.other, {"type": "read_index", "id": 5})
    assert f.sent[-1] == (f.other, {"type": "read_index_resp", "id": 5,
                                    "error": "not the leader"})


def test_a_follower_forwards_reads_and_serves_after_applying_the_index(f: Follower) -> None:
    term1_log(f)  # leader known, applied 7
    rs = Readers()
    f.fsm.request_read(rs.new())
    f.fsm.request_read(rs.new())
    f.fsm._take_reads()
    node, ask = f.sent[-1]
    assert node == f.leader and ask["type"] == "read_index", "both share one request"
    f.fsm._SyncObj__onMessageReceived(f.leader, {
        "type": "read_index_resp", "id": ask["id"], "index": 9})
    f.fsm._settle_reads()
    assert rs.outcomes == {}, "index 9 is not applied here yet"
    f.ae(8, 1, [(9, 1)], 9, 1)
    f.apply()
    f.fsm._settle_reads()
    assert rs.outcomes == {1: None, 2: None}


def test_a_read_with_no_leader_known_fails_at_once(f: Follower) -> None:
    rs = Readers()
    f.fsm.request_read(rs.new())
    f.fsm._take_reads()
    assert "no leader" in str(rs.outcomes[1])
