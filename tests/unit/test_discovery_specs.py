"""kvsync.discovery.endpoints: what --endpoint and --endpoints-file accept, and how they fail."""

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync.discovery.endpoints import parse_endpoint_spec, parse_endpoints_document
from kvsync.errors import ConfigError
from kvsync.model import Endpoint, EndpointId


def test_minimal_spec_gives_one_endpoint_with_defaults() -> None:
    [endpoint] = parse_endpoint_spec("name=pod-a,model=demo,pub=tcp://127.0.0.1:5557")
    assert endpoint == Endpoint(
        id=EndpointId("pod-a", 0),
        model="demo",
        pub="tcp://127.0.0.1:5557",
        replay=None,
        engine="http://127.0.0.1:8000",
    )
    assert (endpoint.lora_id, endpoint.topic, endpoint.generation) == (None, "", "")


def test_engine_is_on_the_pub_host_at_engine_port_or_the_callers_default_for_every_rank() -> None:
    ranks = parse_endpoint_spec("name=a,model=m,pub=tcp://10.0.0.7:5557,dp_size=2,engine_port=9000")
    assert [e.engine for e in ranks] == ["http://10.0.0.7:9000"] * 2
    [v6] = parse_endpoint_spec("name=a,model=m,pub=tcp://[::1]:5557", engine_port=8100)
    assert v6.engine == "http://[::1]:8100"
    [given] = parse_endpoints_document(
        '[{"name": "a", "model": "m", "pub": "tcp://h:1", "engine_port": 7000}]', engine_port=1
    )
    [defaulted] = parse_endpoints_document('[{"name": "a", "model": "m", "pub": "tcp://h:1"}]')
    assert (given.engine, defaulted.engine) == ("http://h:7000", "http://h:8000")


def test_dp_size_puts_each_rank_on_base_port_plus_rank_for_both_addresses() -> None:
    endpoints = parse_endpoint_spec(
        "name=pod-a,model=demo,pub=tcp://10.0.0.7:5557,replay=tcp://10.0.0.7:6000,"
        "dp_size=3,lora_id=3,topic=kv@"
    )
    assert [(e.id, e.pub, e.replay) for e in endpoints] == [
        (EndpointId("pod-a", 0), "tcp://10.0.0.7:5557", "tcp://10.0.0.7:6000"),
        (EndpointId("pod-a", 1), "tcp://10.0.0.7:5558", "tcp://10.0.0.7:6001"),
        (EndpointId("pod-a", 2), "tcp://10.0.0.7:5559", "tcp://10.0.0.7:6002"),
    ]
    assert {(e.model, e.lora_id, e.topic) for e in endpoints} == {("demo", 3, "kv@")}


def test_ipv6_host_in_brackets_and_dns_names_are_kept() -> None:
    [v6] = parse_endpoint_spec("name=a,model=m,pub=tcp://[::1]:5557,replay=tcp://[::1]:5558")
    assert (v6.pub, v6.replay) == ("tcp://[::1]:5557", "tcp://[::1]:5558")
    [dns] = parse_endpoint_spec(" name = a , model=m , pub=tcp://vllm-0.svc:5557 ")
    assert (dns.id.pod, dns.pub) == ("a", "tcp://vllm-0.svc:5557")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected key=value"),
        ("name=a,model=m", "missing pub="),
        ("model=m,pub=tcp://h:1", "missing name="),
        ("name=a,pub=tcp://h:1", "missing model="),
        ("name=,model=m,pub=tcp://h:1", "name must be a non-empty string"),
        ("name=a,model=m,pub=tcp://h:1,colour=red", "unknown key 'colour'"),
        ("name=a,name=b,model=m,pub=tcp://h:1", "name= given twice"),
        ("name=a,model=m,pub=127.0.0.1:5557", "tcp://host:port"),
        ("name=a,model=m,pub=ipc:///tmp/x", "tcp://host:port"),
        ("name=a,model=m,pub=tcp://h", "tcp://host:port"),
        ("name=a,model=m,pub=tcp://::1:5557", "put an IPv6 host in brackets"),
        ("name=a,model=m,pub=tcp://[::1:5557", "tcp://[ipv6]:port"),
        ("name=a,model=m,pub=tcp://[zz::1]:5557", "invalid IPv6 host"),
        ("name=a,model=m,pub=tcp://*:5557", "invalid host"),
        ("name=a,model=m,pub=tcp://h:0", "pub port must be in [1, 65535]"),
        ("name=a,model=m,pub=tcp://h:1,engine_port=0", "engine_port must be in [1, 65535]"),
        ("name=a,model=m,pub=tcp://h:1,engine_port=x", "engine_port must be an integer"),
        ("name=a,model=m,pub=tcp://h:65536", "pub port must be in [1, 65535]"),
        ("name=a,model=m,pub=tcp://h:x1", "pub port must be an integer"),
        ("name=a,model=m,pub=tcp://h:1,replay=tcp://other:2", "differs from pub host"),
        ("name=a,model=m,pub=tcp://h:1,dp_size=0", "dp_size must be in [1, 1024]"),
        ("name=a,model=m,pub=tcp://h:1,dp_size=two", "dp_size must be an integer"),
        ("name=a,model=m,pub=tcp://h:65535,dp_size=2", "past 65535"),
        ("name=a,model=m,pub=tcp://h:1,replay=tcp://h:65535,dp_size=2", "past 65535"),
        ("name=a,model=m,pub=tcp://h:1,lora_id=-1", "lora_id must be in"),
        ("name=a,model=m,pub=tcp://h:1,lora_id=1.5", "lora_id must be an integer"),
    ],
)
def test_invalid_spec_is_a_one_line_config_error_naming_the_problem(
    spec: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoint_spec(spec)
    text = str(caught.value)
    assert message in text
    assert text.startswith("--endpoint ")
    assert "\n" not in text


def test_yaml_document_with_numbers_and_strings() -> None:
    text = """
- name: pod-a
  model: demo
  pub: tcp://127.0.0.1:5557
  replay: tcp://127.0.0.1:5558
  dp_size: 2
- {name: pod-b, model: other, pub: "tcp://[::1]:7000", lora_id: "4", topic: ""}
"""
    endpoints = parse_endpoints_document(text)
    assert [(e.id, e.model, e.pub, e.replay, e.lora_id) for e in endpoints] == [
        (EndpointId("pod-a", 0), "demo", "tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558", None),
        (EndpointId("pod-a", 1), "demo", "tcp://127.0.0.1:5558", "tcp://127.0.0.1:5559", None),
        (EndpointId("pod-b", 0), "other", "tcp://[::1]:7000", None, 4),
    ]


def test_json_document_equals_the_same_specs() -> None:
    entries = [{"name": "a", "model": "m", "pub": "tcp://10.1.2.3:5557", "dp_size": 2}]
    assert parse_endpoints_document(json.dumps(entries)) == parse_endpoint_spec(
        "name=a,model=m,pub=tcp://10.1.2.3:5557,dp_size=2"
    )


@pytest.mark.parametrize("text", ["", "   \n", "# nothing yet\n", "[]"])
def test_empty_document_is_no_endpoints(text: str) -> None:
    assert parse_endpoints_document(text) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a", "must be a list of endpoints, got a dict"),
        ("[1, 2]", "entry 0: expected a mapping"),
        ("- {name: a, model: m}", "entry 0: missing pub="),
        ("- {name: a, model: m, pub: 'tcp://h:1', dp_size: true}", "dp_size must be an integer"),
        ("- {name: a, model: 1.5, pub: 'tcp://h:1'}", "model must be a non-empty string"),
        (
            "- {name: a, model: m, pub: 'tcp://h:1'}\n- {name: a, model: n, pub: 'tcp://h:2'}",
            "twice",
        ),
        ("- [unclosed", "neither JSON nor YAML at line"),
        ("{1: 2}", "must be a list"),
    ],
)
def test_invalid_document_is_a_one_line_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_endpoints_document(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_spec_text_gives_endpoints_or_config_error(spec: str) -> None:
    try:
        endpoints = parse_endpoint_spec(spec)
    except ConfigError:
        return
    assert endpoints
    assert all(e.pub.startswith("tcp://") for e in endpoints)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json.map(json.dumps), st.text(max_size=80)))
def test_any_document_gives_endpoints_or_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_endpoints_document(text)
