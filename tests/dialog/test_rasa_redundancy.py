"""Two real Rasa servers sharing their trackers and locks in Redis: the client names both;
when the one a conversation was talking to is killed mid-form, the next turn is answered
by the other, where the conversation was (the order number the first one asked for)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from dialog.rasa_client import RasaClient
from dialog.runtime import RasaServers, ensure_trained
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from switchboard.bench.local_cluster import RedisServer
from switchboard.node import rasa_config
from tests.support.dialog_fixtures import (
    RASA_START_TIMEOUT_S,
    TEST_API_TOKEN,
    rasa_test_settings,
)


async def test_a_conversation_goes_on_at_the_other_server_when_one_dies(
    redis_server: RedisServer, database_url: str, tmp_path: Path
) -> None:
    model = ensure_trained(rasa_config(rasa_test_settings(PROJECT_ROOT / "var")))
    pair = []
    for name in ("a", "b"):
        settings = rasa_test_settings(tmp_path / name).model_copy(
            update={"redis_url": redis_server.url})
        pair.append(RasaServers(rasa_config(settings), model, rasa_port=free_port(),
                                action_port=free_port(), database_url=database_url))
    first, second = pair
    for servers in pair:
        servers.start()
    client = RasaClient(f"{first.url},{second.url}", api_token=TEST_API_TOKEN)
    try:
        for servers in pair:
            await asyncio.to_thread(servers.wait_healthy, RASA_START_TIMEOUT_S)
        conversation = f"redundant-{uuid.uuid4().hex[:8]}"
        greeting = await client.send_event(conversation, "call_start")
        asking = await client.send(conversation, "I'd like to check my order status.")
        assert asking.expects == "order_number", asking

        for child in first._children:  # the first server dies as a crash would
            child.kill()
        answered = await client.send(conversation, "four eight two one three")
        again = await client.send(conversation, "Thanks, that's all.")
    finally:
        await client.aclose()
        for servers in pair:
            servers.stop()
    said = " ".join(m.text or "" for m in answered.messages)
    assert greeting.messages and "shipped" in said and "4 8 2 1 3" in said, said
    assert answered.slots and answered.slots.get("order_number") == "48213"
    assert again.messages  # and the conversation goes on there
