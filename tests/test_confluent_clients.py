

def test_a_commit_from_the_revoke_checkpoints_worker_runs_on_the_polling_thread():
    import threading

    fake = FakeConsumer()
    committing_threads: list[int] = []
    real_commit = fake.commit

    def commit(offsets: list[Any], asynchronous: bool) -> list[Any]:
        committing_threads.append(threading.get_ident())
        return real_commit(offsets, asynchronous)

    fake.commit = commit  # type: ignore[method-assign]
    group: ConfluentGroupConsumer

    async def on_revoked(parts: frozenset) -> None:  # like StateManager.on_revoked: the work on a worker
        from streamer.checkpoint.manager import _off_loop

        await _off_loop(lambda: group.commit({TopicPartition("readings", 0): 9}))

    group = consumer_with(fake, on_revoked=on_revoked)
    fake.assignment = [confluent_kafka.TopicPartition("readings", 0)]
    group._assigned = frozenset({TopicPartition("readings", 0)})
    fake.rebalance = ("revoke", list(fake.assignment))
    group.poll(10, 100)
    assert fake.committed == [(0, 9)] and committing_threads == [threading.get_ident()]
