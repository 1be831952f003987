"""``fastlm serve``: a real uvicorn server on 127.0.0.1, driven by the official ``openai`` client and raw HTTP."""
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
import uvicorn

import fastlm
from fastlm.server import create_app

MODEL = Path(__file__).parent / "data" / "archs" / "qwen2" / "model.gguf"
KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread, stopped at the end of the module."""

    def __init__(self, lm, **options):
        self.port = free_port()
        self.app = create_app(lm, model_name="tiny", **options)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def lm():
    return fastlm.load(MODEL)


@pytest.fixture(scope="module")
def server(lm):
    s = Server(lm, parallel=4, ctx=512, queue_size=16, api_key=KEY, max_tokens_limit=256)   # 16 clients fit
    yield s
    s.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_chat_completion_equals_the_library(client, lm):
    messages = [{"role": "user", "content": "Say something."}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=5, temperature=0.8)
    alone = lm.chat(messages, 12, seed=5, temperature=0.8, top_p=1.0, top_k=0, min_p=0.0)
    assert r.choices[0].message.content == alone.text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens == len(lm.chat_prompt(messages))
    assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_completion_and_streaming(client, lm):
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=10, seed=1, stop=["e"])
    alone = lm.generate("Once upon", 10, seed=1, stop=["e"], temperature=1.0, top_p=1.0, top_k=0, min_p=0.0)
    assert r.choices[0].text == alone.text
    stream = client.completions.create(model="tiny", prompt="Once upon", max_tokens=10, seed=1, stop=["e"],
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream) == alone.text
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=8, seed=2, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == lm.chat([{"role": "user", "content": "Hi"}], 8, seed=2, temperature=1.0, top_p=1.0, top_k=0,
                           min_p=0.0).text


def test_json_schema_and_logprobs(client):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "JSON please"}], max_tokens=60, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        logprobs=True, top_logprobs=2)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    entries = r.choices[0].logprobs.content
    assert entries and all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)


def test_models_health_metrics(client, server):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in ("fastlm_requests_total", "fastlm_generated_tokens_total", "fastlm_queue_depth",
                 "fastlm_running_rows", "fastlm_tokens_per_second"):
        assert name in metrics


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": 5}).encode(), 400, "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 3}).encode(), 400, "n"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "stop": [""]}).encode(), 400, "stop"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}).encode(), 400, "model"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}],
                 "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}).encode(),
     400, None),
    (b"x" * (2 << 20), 413, None),
])
def test_malformed_requests_get_openai_errors(server, body, status, param):
    r = httpx.post(f"{server.url}/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
    assert "Traceback" not in r.text


def test_api_key(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(f"{server.url}/v1/chat/completions", headers=headers,
                       json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401


def test_concurrent_seeded_streams_equal_each_alone(client, lm, server):
    """16 streaming requests at once on 4 rows (the rest queue and join between steps): each returns
    exactly the tokens it returns alone."""
    def ask(i):
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"Q{i}"}],
                                                max_tokens=10 + i % 4, seed=i, temperature=0.9, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    alone = [lm.chat([{"role": "user", "content": f"Q{i}"}], 10 + i % 4, seed=i, temperature=0.9, top_p=1.0,
                     top_k=0, min_p=0.0).text for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, range(16)))
    assert together == alone


def test_a_cancelled_stream_frees_its_row(client, server):
    engine = server.app.state.engine
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "long"}],
                                            max_tokens=180, seed=1, stream=True)
    next(iter(stream))
    stream.close()                                   # the client goes away mid-stream
    deadline = time.monotonic() + 30
    while engine.batch.rows and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not engine.batch.rows
    r = client.completions.create(model="tiny", prompt="still there?", max_tokens=3, seed=0)
    assert r.usage.completion_tokens == 3


def test_a_full_queue_answers_503(lm):
    s = Server(lm, parallel=1, ctx=256, queue_size=0)
    try:
        body = {"prompt": "x", "max_tokens": 250, "stream": True, "logit_bias": {"0": -100, "1": -100, "2": -100}}
        with httpx.stream("POST", f"{s.url}/v1/completions", json=body) as first:
            lines = first.iter_lines()
            next(lines)                              # the one row is busy (kept open: the stream goes on)
            r = httpx.post(f"{s.url}/v1/completions", json={"prompt": "y", "max_tokens": 2})
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "overloaded"
    finally:
        s.stop()


def test_the_prompt_cache_reuses_a_shared_history(client, lm):
    """A follow-up turn shares the first turn's prompt and reply: its prefill starts after them, and the
    reply is the same as without any cache."""
    first = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello!"}]
    r1 = client.chat.completions.create(model="tiny", messages=first, max_tokens=10, seed=4)
    follow = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And then?"}]
    r2 = client.chat.completions.create(model="tiny", messages=follow, max_tokens=10, seed=4)
    assert r2.usage.prompt_tokens_details.cached_tokens >= len(lm.chat_prompt(first))
    fresh = lm.chat(follow, 10, seed=4, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0)
    assert r2.choices[0].message.content == fresh.text


def test_the_web_chat_streams_an_answer_in_a_real_browser(server, lm):
    """Debian's chromium, headless, driven by selenium: the page loads, a question is typed, the answer
    streams in and the tokens/s show."""
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("needs Debian's browser: apt-get install chromium chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    open_server = Server(lm, parallel=2, ctx=256)           # the page sends no API key
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(open_server.url + "/")
        assert driver.title == "fastlm chat"
        driver.find_element(By.ID, "prompt").send_keys("What is the capital of France?")
        driver.find_element(By.ID, "send").click()
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "tok/s" in d.find_element(By.ID, "stats").text)
        answer = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text
        assert answer and not answer.startswith("error")
        assert driver.find_elements(By.CSS_SELECTOR, ".msg.user")[-1].text == "What is the capital of France?"
    finally:
        driver.quit()
        open_server.stop()
