//! etcdctl's output formats (`-w simple|json|fields|table`), so scripts that parse etcdctl
//! output parse etchctl's. JSON follows etcdctl: protobuf field names, bytes as base64, zero
//! values omitted, numbers as JSON numbers.

use base64::Engine;
use serde_json::{Map, Value, json};

use etch_protocol::etcdserverpb::WatchResponse;
use etch_protocol::etcdserverpb::response_op::Response as OpResp;
use etch_protocol::etcdserverpb::{
    DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader, StatusResponse, TxnResponse,
};
use etch_protocol::mvccpb::KeyValue;
use etch_protocol::mvccpb::event::EventType;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// etcdctl's default human-readable lines.
    Simple,
    /// etcdctl's JSON.
    Json,
    /// `"Field" : value` lines.
    Fields,
    /// An ASCII table (endpoint status).
    Table,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn put_nonzero(m: &mut Map<String, Value>, k: &str, v: i64) {
    if v != 0 {
        m.insert(k.into(), json!(v));
    }
}

/// A response header as etcdctl's JSON prints it.
pub fn header_json(h: &Option<ResponseHeader>) -> Value {
    let h = h.unwrap_or_default();
    let mut m = Map::new();
    if h.cluster_id != 0 {
        m.insert("cluster_id".into(), json!(h.cluster_id));
    }
    if h.member_id != 0 {
        m.insert("member_id".into(), json!(h.member_id));
    }
    put_nonzero(&mut m, "revision", h.revision);
    if h.raft_term != 0 {
        m.insert("raft_term".into(), json!(h.raft_term));
    }
    Value::Object(m)
}

/// A KeyValue as etcdctl's JSON prints it.
pub fn kv_json(kv: &KeyValue) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), json!(b64(&kv.key)));
    put_nonzero(&mut m, "create_revision", kv.create_revision);
    put_nonzero(&mut m, "mod_revision", kv.mod_revision);
    put_nonzero(&mut m, "version", kv.version);
    if !kv.value.is_empty() {
        m.insert("value".into(), json!(b64(&kv.value)));
    }
    put_nonzero(&mut m, "lease", kv.lease);
    Value::Object(m)
}

/// A RangeResponse as JSON.
pub fn range_json(r: &RangeResponse) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    if !r.kvs.is_empty() {
        m.insert(
            "kvs".into(),
            Value::Array(r.kvs.iter().map(kv_json).collect()),
        );
    }
    if r.more {
        m.insert("more".into(), json!(true));
    }
    put_nonzero(&mut m, "count", r.count);
    Value::Object(m)
}

/// A PutResponse as JSON.
pub fn put_json(r: &PutResponse) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    if let Some(p) = &r.prev_kv {
        m.insert("prev_kv".into(), kv_json(p));
    }
    Value::Object(m)
}

/// A DeleteRangeResponse as JSON.
pub fn del_json(r: &DeleteRangeResponse) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    put_nonzero(&mut m, "deleted", r.deleted);
    if !r.prev_kvs.is_empty() {
        m.insert(
            "prev_kvs".into(),
            Value::Array(r.prev_kvs.iter().map(kv_json).collect()),
        );
    }
    Value::Object(m)
}

/// A TxnResponse as JSON.
pub fn txn_json(r: &TxnResponse) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    if r.succeeded {
        m.insert("succeeded".into(), json!(true));
    }
    let ops: Vec<Value> = r
        .responses
        .iter()
        .filter_map(|op| op.response.as_ref())
        .map(|op| match op {
            OpResp::ResponseRange(x) => json!({"Response": {"response_range": range_json(x)}}),
            OpResp::ResponsePut(x) => json!({"Response": {"response_put": put_json(x)}}),
            OpResp::ResponseDeleteRange(x) => {
                json!({"Response": {"response_delete_range": del_json(x)}})
            }
            OpResp::ResponseTxn(x) => json!({"Response": {"response_txn": txn_json(x)}}),
        })
        .collect();
    if !ops.is_empty() {
        m.insert("responses".into(), Value::Array(ops));
    }
    Value::Object(m)
}

/// A StatusResponse as JSON (etcdctl's field names).
pub fn status_json(r: &StatusResponse) -> Value {
    json!({
        "header": header_json(&r.header),
        "version": r.version,
        "dbSize": r.db_size,
        "leader": r.leader,
        "raftIndex": r.raft_index,
        "raftTerm": r.raft_term,
        "raftAppliedIndex": r.raft_applied_index,
        "dbSizeInUse": r.db_size_in_use,
    })
}

/// A WatchResponse as etcdctl's JSON prints it.
pub fn watch_json(r: &WatchResponse) -> Value {
    let mut m = Map::new();
    m.insert("Header".into(), header_json(&r.header));
    let events: Vec<Value> = r
        .events
        .iter()
        .map(|e| {
            let mut ev = Map::new();
            if e.r#type == EventType::Delete as i32 {
                ev.insert("type".into(), json!(1));
            }
            if let Some(kv) = &e.kv {
                ev.insert("kv".into(), kv_json(kv));
            }
            if let Some(p) = &e.prev_kv {
                ev.insert("prev_kv".into(), kv_json(p));
            }
            Value::Object(ev)
        })
        .collect();
    m.insert("Events".into(), Value::Array(events));
    m.insert("CompactRevision".into(), json!(r.compact_revision));
    m.insert("Canceled".into(), json!(r.canceled));
    m.insert("Created".into(), json!(r.created));
    Value::Object(m)
}

/// etcdctl's simple printing of watch events: `PUT`/`DELETE`, then the previous key and value
/// (when asked for and known), then the key and value.
pub fn watch_simple(r: &WatchResponse, out: &mut String) {
    for e in &r.events {
        out.push_str(if e.r#type == EventType::Delete as i32 {
            "DELETE\n"
        } else {
            "PUT\n"
        });
        for kv in e.prev_kv.iter().chain(e.kv.iter()) {
            out.push_str(&format!("{}\n{}\n", s(&kv.key), s(&kv.value)));
        }
    }
}

/// etcdctl's simple printing of a Range: key and value lines (or values only).
pub fn range_simple(r: &RangeResponse, print_value_only: bool, out: &mut String) {
    for kv in &r.kvs {
        if !print_value_only {
            out.push_str(&s(&kv.key));
            out.push('\n');
        }
        if !kv.value.is_empty() || print_value_only {
            out.push_str(&s(&kv.value));
            out.push('\n');
        }
    }
}

/// etcdctl's simple printing of a Put.
pub fn put_simple(r: &PutResponse, out: &mut String) {
    out.push_str("OK\n");
    if let Some(p) = &r.prev_kv {
        out.push_str(&format!("{}\n{}\n", s(&p.key), s(&p.value)));
    }
}

/// etcdctl's simple printing of a DeleteRange: the count, then previous pairs.
pub fn del_simple(r: &DeleteRangeResponse, out: &mut String) {
    out.push_str(&format!("{}\n", r.deleted));
    for kv in &r.prev_kvs {
        out.push_str(&format!("{}\n{}\n", s(&kv.key), s(&kv.value)));
    }
}

/// etcdctl's simple printing of a Txn.
pub fn txn_simple(r: &TxnResponse, out: &mut String) {
    out.push_str(if r.succeeded {
        "SUCCESS\n"
    } else {
        "FAILURE\n"
    });
    for op in r.responses.iter().filter_map(|o| o.response.as_ref()) {
        out.push('\n');
        match op {
            OpResp::ResponseRange(x) => range_simple(x, false, out),
            OpResp::ResponsePut(x) => put_simple(x, out),
            OpResp::ResponseDeleteRange(x) => del_simple(x, out),
            OpResp::ResponseTxn(x) => txn_simple(x, out),
        }
    }
}

fn header_fields(h: &Option<ResponseHeader>, out: &mut String) {
    let h = h.unwrap_or_default();
    out.push_str(&format!(
        "\"ClusterID\" : {}\n\"MemberID\" : {}\n\"Revision\" : {}\n\"RaftTerm\" : {}\n",
        h.cluster_id, h.member_id, h.revision, h.raft_term
    ));
}

fn kv_fields(kv: &KeyValue, out: &mut String) {
    out.push_str(&format!(
        "\"Key\" : {:?}\n\"CreateRevision\" : {}\n\"ModRevision\" : {}\n\"Version\" : {}\n\"Value\" : {:?}\n\"Lease\" : {}\n",
        s(&kv.key),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        s(&kv.value),
        kv.lease
    ));
}

/// etcdctl's fields printing of a Range.
pub fn range_fields(r: &RangeResponse, out: &mut String) {
    header_fields(&r.header, out);
    for kv in &r.kvs {
        kv_fields(kv, out);
    }
    out.push_str(&format!("\"More\" : {}\n\"Count\" : {}\n", r.more, r.count));
}

/// etcdctl's fields printing of a Put.
pub fn put_fields(r: &PutResponse, out: &mut String) {
    header_fields(&r.header, out);
    if let Some(p) = &r.prev_kv {
        kv_fields(p, out);
    }
}

/// etcdctl's fields printing of a DeleteRange.
pub fn del_fields(r: &DeleteRangeResponse, out: &mut String) {
    header_fields(&r.header, out);
    out.push_str(&format!("\"Deleted\" : {}\n", r.deleted));
    for kv in &r.prev_kvs {
        kv_fields(kv, out);
    }
}

/// Human-readable bytes as etcdctl prints db sizes (`20 kB`, `1.2 MB`: decimal units).
pub fn human_bytes(n: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 || v >= 10.0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// One endpoint status line as etcdctl's simple format prints it.
pub fn status_simple(endpoint: &str, r: &StatusResponse) -> String {
    let id = r.header.as_ref().map_or(0, |h| h.member_id);
    format!(
        "{}, {:x}, {}, {}, {}, {}, {}, {}, {}, {}\n",
        endpoint,
        id,
        r.version,
        human_bytes(r.db_size),
        r.leader == id,
        r.is_learner,
        r.raft_term,
        r.raft_index,
        r.raft_applied_index,
        r.errors.join(", ")
    )
}

/// Endpoint statuses as etcdctl's table.
pub fn status_table(rows: &[(String, StatusResponse)]) -> String {
    let head = [
        "ENDPOINT",
        "ID",
        "VERSION",
        "DB SIZE",
        "IS LEADER",
        "IS LEARNER",
        "RAFT TERM",
        "RAFT INDEX",
        "RAFT APPLIED INDEX",
        "ERRORS",
    ];
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for (ep, r) in rows {
        let id = r.header.as_ref().map_or(0, |h| h.member_id);
        cells.push(vec![
            ep.clone(),
            format!("{id:x}"),
            r.version.clone(),
            human_bytes(r.db_size),
            (r.leader == id).to_string(),
            r.is_learner.to_string(),
            r.raft_term.to_string(),
            r.raft_index.to_string(),
            r.raft_applied_index.to_string(),
            r.errors.join(", "),
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| cells.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let line = {
        let mut l = String::from("+");
        for w in &widths {
            l.push_str(&"-".repeat(w + 2));
            l.push('+');
        }
        l.push('\n');
        l
    };
    let mut out = line.clone();
    for (n, row) in cells.iter().enumerate() {
        out.push('|');
        for (i, c) in row.iter().enumerate() {
            out.push_str(&format!(" {:^w$} |", c, w = widths[i]));
        }
        out.push('\n');
        if n == 0 {
            out.push_str(&line);
        }
    }
    out.push_str(&line);
    out
}
