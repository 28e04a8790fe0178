//! The part of PostgreSQL's logical replication protocol (`pgoutput`, protocol
//! version 1) the reactor reads: Relation, Insert and Update messages, with
//! column values in text form. Everything else (Begin, Commit, Origin, Type,
//! Delete, Truncate, Message) is recognised and skipped.
//! See <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

/// A table as the Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value that did not change (not sent).
    Unchanged,
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    Update {
        relation: u32,
        new: Vec<Value>,
    },
    /// Begin, Commit, Delete, Truncate, Type, Origin, logical Message.
    Other(u8),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError(format!(
                "needed {n} more bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| DecodeError("unterminated string".into()))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.u16()?;
        let mut values = Vec::with_capacity(n as usize);
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Value::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                other => {
                    return Err(DecodeError(format!(
                        "unknown column kind {:?}",
                        other as char
                    )))
                }
            });
        }
        Ok(values)
    }
}

/// Decodes one message (one row of `pg_logical_slot_get_binary_changes`, or
/// the payload of one XLogData message when streaming).
pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: data };
    let tag = r.u8()?;
    match tag {
        b'R' => {
            let id = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let _replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let _flags = r.u8()?;
                columns.push(r.string()?);
                let _type_oid = r.u32()?;
                let _type_modifier = r.u32()?;
            }
            Ok(Message::Relation(Relation {
                id,
                schema,
                name,
                columns,
            }))
        }
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Ok(Message::Insert {
                    relation,
                    new: r.tuple()?,
                }),
                other => Err(DecodeError(format!(
                    "insert: expected 'N', got {:?}",
                    other as char
                ))),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                r.tuple()?;
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!(
                    "update: expected 'N', got {:?}",
                    kind as char
                )));
            }
            Ok(Message::Update {
                relation,
                new: r.tuple()?,
            })
        }
        b'B' | b'C' | b'D' | b'T' | b'Y' | b'O' | b'M' => Ok(Message::Other(tag)),
        other => Err(DecodeError(format!(
            "unknown message type {:?}",
            other as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_bytes() -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(16385u32.to_be_bytes());
        b.extend(b"public\0jobs\0");
        b.push(b'd');
        b.extend(2u16.to_be_bytes());
        for (flags, name) in [(1u8, "id"), (0, "status")] {
            b.push(flags);
            b.extend(name.as_bytes());
            b.push(0);
            b.extend(25u32.to_be_bytes());
            b.extend((-1i32).to_be_bytes());
        }
        b
    }

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.push(b'n'),
                Some(s) => {
                    b.push(b't');
                    b.extend((s.len() as u32).to_be_bytes());
                    b.extend(s.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn decodes_a_relation() {
        assert_eq!(
            decode(&relation_bytes()),
            Ok(Message::Relation(Relation {
                id: 16385,
                schema: "public".into(),
                name: "jobs".into(),
                columns: vec!["id".into(), "status".into()],
            }))
        );
    }

    #[test]
    fn decodes_inserts_and_updates_with_or_without_an_old_key() {
        let mut insert = vec![b'I'];
        insert.extend(7u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(tuple(&[Some("a"), None]));
        assert_eq!(
            decode(&insert),
            Ok(Message::Insert {
                relation: 7,
                new: vec![Value::Text("a".into()), Value::Null]
            })
        );

        let mut update = vec![b'U'];
        update.extend(7u32.to_be_bytes());
        update.push(b'K');
        update.extend(tuple(&[Some("old"), None]));
        update.push(b'N');
        update.extend(tuple(&[Some("new"), Some("done")]));
        assert_eq!(
            decode(&update),
            Ok(Message::Update {
                relation: 7,
                new: vec![Value::Text("new".into()), Value::Text("done".into())]
            })
        );
    }

    #[test]
    fn skips_what_it_does_not_need_and_rejects_garbage() {
        assert_eq!(decode(b"B12345678"), Ok(Message::Other(b'B')));
        assert!(decode(b"").is_err());
        assert!(decode(b"Z").is_err());
        let mut truncated = relation_bytes();
        truncated.truncate(20);
        assert!(decode(&truncated).is_err());
        let mut bad_kind = vec![b'I'];
        bad_kind.extend(7u32.to_be_bytes());
        bad_kind.push(b'N');
        bad_kind.extend(1u16.to_be_bytes());
        bad_kind.push(b'x');
        assert!(decode(&bad_kind).is_err());
    }
}
