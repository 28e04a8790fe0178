//! The part of Postgres' streaming replication protocol that WAL mode needs,
//! on one connection started with `replication=database`:
//! `CREATE_REPLICATION_SLOT … TEMPORARY LOGICAL pgoutput`, `START_REPLICATION`,
//! then XLogData and keepalives in, standby status updates out.
//!
//! Why our own: tokio-postgres cannot enter the copy-both mode streaming uses,
//! and the published replication crates expect a slot that already exists
//! (a temporary slot must be created on the very session that streams from
//! it). Messages are written with `postgres-protocol` (which tokio-postgres
//! uses too), SCRAM and MD5 come from it; the connection string, `sslmode`
//! and certificates are read exactly as for every other connection
//! ([`crate::store::conninfo`]).
//!
//! The log-in is at least as strict as libpq's: `require_auth` is checked on
//! every request before anything is sent, `channel_binding` (default
//! `prefer`) uses SCRAM-SHA-256-PLUS with `tls-server-end-point` over TLS
//! when the server offers it and with `require` accepts nothing else, and
//! SCRAM only succeeds once the server's signature was verified.
use crate::store::conninfo;
use crate::store::db::DbError;
use crate::store::require_auth::{method_of_request, AuthMethod, RequireAuth};
use crate::store::tls::MakeTls;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::{ChannelBinding as ChannelBindingMode, Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

/// How long closing may take before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A replication connection.
pub struct Replication {
    io: Box<dyn Io>,
    read: BytesMut,
    write: BytesMut,
}

/// What the server streams once replication has started.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One pgoutput message; `end` is where the server's WAL ends.
    XLogData { end: u64, data: Bytes },
    /// Nothing to send; `reply` asks for a status update at once.
    Keepalive { end: u64, reply: bool },
}

fn io_error(e: std::io::Error) -> DbError {
    DbError::Connect(format!("replication connection: {e}"))
}

fn protocol(what: &str) -> DbError {
    DbError::Connect(format!("replication connection: {what}"))
}

/// A message body at least `n` bytes long, or a protocol error (never a
/// panic on what the server sent).
fn need(body: &Bytes, n: usize) -> Result<(), DbError> {
    if body.len() < n {
        return Err(protocol("short message"));
    }
    Ok(())
}

fn take_i32(body: &mut Bytes) -> Result<i32, DbError> {
    need(body, 4)?;
    Ok(body.get_i32())
}

/// An ErrorResponse's fields as the DbError every other statement gives.
fn server_error(mut body: &[u8]) -> DbError {
    let (mut code, mut message, mut detail, mut hint) = (None, String::new(), None, None);
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        let value = String::from_utf8_lossy(&rest[..end]).into_owned();
        match field {
            b'C' => code = Some(SqlState::from_code(&value)),
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
        body = rest.get(end + 1..).unwrap_or_default();
    }
    DbError::Statement {
        code,
        message,
        detail,
        hint,
    }
}

/// Microseconds since 2000-01-01, the replication protocol's clock.
fn pg_now() -> i64 {
    const PG_EPOCH: u64 = 946_684_800;
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since_unix.as_micros() as i64) - (PG_EPOCH as i64) * 1_000_000
}

/// What logging in needs from the connection string.
struct Login<'a> {
    user: &'a str,
    password: Option<&'a [u8]>,
    dbname: &'a str,
    application_name: &'a str,
    /// The connection string's `options` (server settings, `-c name=value`).
    options: Option<&'a str>,
    require_auth: &'a RequireAuth,
    channel_binding: ChannelBindingMode,
    /// Whether the connection is TLS.
    encrypted: bool,
    /// The TLS connection's `tls-server-end-point` data, if the certificate has one.
    end_point: Option<Vec<u8>>,
}

/// A socket to the server, before the log-in.
struct Opened {
    io: Box<dyn Io>,
    encrypted: bool,
    end_point: Option<Vec<u8>>,
}

impl Opened {
    fn plain(io: Box<dyn Io>) -> Self {
        Opened {
            io,
            encrypted: false,
            end_point: None,
        }
    }
}

impl Login<'_> {
    fn password(&self) -> Result<&[u8], DbError> {
        self.password.ok_or_else(|| {
            protocol("the server asks for a password and the connection string has none")
        })
    }

    /// Refuses what `require_auth` does not allow, and with
    /// `channel_binding=require` anything but SCRAM with channel binding.
    fn allow(&self, method: AuthMethod) -> Result<(), DbError> {
        self.require_auth
            .check(method)
            .map_err(|e| protocol(&e.to_string()))?;
        if self.channel_binding == ChannelBindingMode::Require && method != AuthMethod::ScramSha256
        {
            return Err(protocol(&format!(
                "channel_binding=require refuses this server: {}",
                method.request()
            )));
        }
        Ok(())
    }

    /// The SCRAM mechanism to use among those the server offers, as libpq
    /// and tokio-postgres choose: `-PLUS` with the certificate's hash when
    /// TLS is in use and `channel_binding` is not `disable`.
    fn scram(&self, offered: &[u8]) -> Result<(&'static str, sasl::ChannelBinding), DbError> {
        let offers = |name: &str| offered.split(|b| *b == 0).any(|m| m == name.as_bytes());
        let binding = self
            .end_point
            .clone()
            .filter(|_| self.channel_binding != ChannelBindingMode::Disable);
        let chosen = match binding {
            Some(hash) if offers(sasl::SCRAM_SHA_256_PLUS) => (
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(hash),
            ),
            Some(_) if offers(sasl::SCRAM_SHA_256) => {
                (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested())
            }
            None if offers(sasl::SCRAM_SHA_256) => {
                (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported())
            }
            _ => return Err(protocol("the server offers no SASL mechanism we know")),
        };
        if chosen.0 != sasl::SCRAM_SHA_256_PLUS
            && self.channel_binding == ChannelBindingMode::Require
        {
            return Err(protocol(match (self.encrypted, &self.end_point) {
                (false, _) => "channel_binding=require needs TLS, and this connection has none",
                (true, None) => {
                    "channel_binding=require: the server's certificate signature has no \
                     hash to bind to (e.g. Ed25519)"
                }
                (true, Some(_)) => {
                    "channel_binding=require refuses this server: it offers SCRAM without \
                     channel binding"
                }
            }));
        }
        Ok(chosen)
    }
}

impl Replication {
    /// Connects to the first host of `url` that answers, as its user, and
    /// logs in (trust, password, MD5 or SCRAM-SHA-256[-PLUS]) within what
    /// its `require_auth` and `channel_binding` allow.
    pub async fn connect(url: &str, application_name: &str) -> Result<Self, DbError> {
        let info = conninfo::parse(url)?;
        let config = &info.config;
        let user = config
            .get_user()
            .ok_or_else(|| DbError::BadUrl("no user name".into()))?;
        let dbname = config.get_dbname().unwrap_or(user);
        let connector = info.tls.connector()?;
        let ports = config.get_ports();
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let mut last = DbError::BadUrl("no host".into());
        for (i, host) in config.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let address = config.get_hostaddrs().get(i).copied();
            let attempt = async {
                let opened = Self::open(&connector, config, host, address, port).await?;
                let mut conn = Replication {
                    io: opened.io,
                    read: BytesMut::with_capacity(64 * 1024),
                    write: BytesMut::new(),
                };
                conn.start_up(&Login {
                    user,
                    password: config.get_password(),
                    dbname,
                    application_name,
                    options: config.get_options(),
                    require_auth: &info.require_auth,
                    channel_binding: config.get_channel_binding(),
                    encrypted: opened.encrypted,
                    end_point: opened.end_point,
                })
                .await?;
                Ok::<_, DbError>(conn)
            };
            // A server that takes the socket but never answers is a failure too.
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e @ DbError::Statement { .. })) => return Err(e),
                Ok(Err(e)) => last = e,
                Err(_) => last = protocol("timed out connecting"),
            }
        }
        Err(last)
    }

    /// A socket to one host (at `address` if the connection string gives
    /// `hostaddr`), with TLS as its `sslmode` says, checked against the
    /// host's name; with TLS, also the channel binding data.
    async fn open(
        connector: &MakeTls,
        config: &tokio_postgres::Config,
        host: &Host,
        address: Option<std::net::IpAddr>,
        port: u16,
    ) -> Result<Opened, DbError> {
        let name = match host {
            Host::Tcp(name) => name,
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let socket = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| protocol(&format!("{}: {e}", path.display())))?;
                return Ok(Opened::plain(Box::new(socket)));
            }
        };
        let socket = match address {
            Some(ip) => tokio::net::TcpStream::connect((ip, port)).await,
            None => tokio::net::TcpStream::connect((name.as_str(), port)).await,
        };
        let mut tcp = socket.map_err(|e| protocol(&format!("{name}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        crate::store::db::set_network_deadlines(&tcp, config).map_err(io_error)?;
        if config.get_ssl_mode() == SslMode::Disable {
            return Ok(Opened::plain(Box::new(tcp)));
        }
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.map_err(io_error)?;
        match tcp.read_u8().await.map_err(io_error)? {
            b'S' => {
                let tls = MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                    &mut connector.clone(),
                    name,
                )?
                .connect(tcp)
                .await?;
                Ok(Opened {
                    end_point: tls.server_end_point().map(<[u8]>::to_vec),
                    encrypted: true,
                    io: Box::new(tls),
                })
            }
            b'N' if config.get_ssl_mode() == SslMode::Prefer => Ok(Opened::plain(Box::new(tcp))),
            b'N' => Err(protocol(
                "the server does not support TLS, and sslmode requires it",
            )),
            _ => Err(protocol("unexpected answer to the TLS request")),
        }
    }

    async fn flush(&mut self) -> Result<(), DbError> {
        self.io.write_all(&self.write).await.map_err(io_error)?;
        self.write.clear();
        self.io.flush().await.map_err(io_error)
    }

    /// A whole message already read: its tag and body.
    fn buffered_message(&mut self) -> Result<Option<(u8, Bytes)>, DbError> {
        if self.read.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]);
        let len = usize::try_from(len).map_err(|_| protocol("message too long"))?;
        if len < 4 {
            return Err(protocol("bad message length"));
        }
        if self.read.len() < 1 + len {
            self.read.reserve(1 + len - self.read.len());
            return Ok(None);
        }
        let mut message = self.read.split_to(1 + len).freeze();
        let tag = message.get_u8();
        message.advance(4);
        Ok(Some((tag, message)))
    }

    /// The next message, read from the socket if needed. Cancel-safe: what
    /// was read stays in the buffer.
    async fn message(&mut self) -> Result<(u8, Bytes), DbError> {
        loop {
            if let Some(message) = self.buffered_message()? {
                return Ok(message);
            }
            if self.read.capacity() - self.read.len() < 8 * 1024 {
                self.read.reserve(64 * 1024);
            }
            if self.io.read_buf(&mut self.read).await.map_err(io_error)? == 0 {
                return Err(protocol("the server closed the connection"));
            }
        }
    }

    async fn start_up(&mut self, login: &Login<'_>) -> Result<(), DbError> {
        let mut params = vec![
            ("user", login.user),
            ("database", login.dbname),
            ("replication", "database"),
            ("application_name", login.application_name),
            ("client_encoding", "UTF8"),
        ];
        params.extend(login.options.map(|options| ("options", options)));
        frontend::startup_message(params, &mut self.write).map_err(io_error)?;
        self.flush().await?;
        // Whether the server asked for anything, and how far SCRAM got.
        let mut asked = false;
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut scram_verified = false;
        let mut authenticated = false;
        loop {
            let (tag, mut body) = self.message().await?;
            match tag {
                b'R' => match take_i32(&mut body)? {
                    _ if authenticated => return Err(protocol("authentication after the log-in")),
                    0 => {
                        if scram.is_some() && !scram_verified {
                            return Err(protocol(
                                "the server ended SCRAM without proving it knows the password \
                                 (no server signature)",
                            ));
                        }
                        if !asked {
                            login.allow(AuthMethod::None)?;
                        }
                        authenticated = true;
                    }
                    3 => {
                        asked = true;
                        login.allow(AuthMethod::Password)?;
                        if !login.encrypted {
                            // libpq sends it too; the manual says how to refuse.
                            tracing::warn!(
                                "the server asks for a cleartext password on a connection without TLS; \
                                 sslmode=verify-full or require_auth=scram-sha-256 refuses that"
                            );
                        }
                        frontend::password_message(login.password()?, &mut self.write)
                            .map_err(io_error)?;
                        self.flush().await?;
                    }
                    5 => {
                        asked = true;
                        login.allow(AuthMethod::Md5)?;
                        let salt = body
                            .get(..4)
                            .and_then(|s| <[u8; 4]>::try_from(s).ok())
                            .ok_or_else(|| protocol("short MD5 salt"))?;
                        let hash = md5_hash(login.user.as_bytes(), login.password()?, salt);
                        frontend::password_message(hash.as_bytes(), &mut self.write)
                            .map_err(io_error)?;
                        self.flush().await?;
                    }
                    10 if scram.is_none() => {
                        asked = true;
                        login.allow(AuthMethod::ScramSha256)?;
                        let (mechanism, binding) = login.scram(&body)?;
                        let s = sasl::ScramSha256::new(login.password()?, binding);
                        frontend::sasl_initial_response(mechanism, s.message(), &mut self.write)
                            .map_err(io_error)?;
                        self.flush().await?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .filter(|_| !scram_verified)
                            .ok_or_else(|| protocol("SASL out of order"))?;
                        s.update(&body).map_err(io_error)?;
                        frontend::sasl_response(s.message(), &mut self.write).map_err(io_error)?;
                        self.flush().await?;
                    }
                    12 => {
                        let s = scram
                            .as_mut()
                            .filter(|_| !scram_verified)
                            .ok_or_else(|| protocol("SASL out of order"))?;
                        // Checks the server's signature: it knew the password too.
                        s.finish(&body).map_err(io_error)?;
                        scram_verified = true;
                    }
                    code => {
                        if let Some(method) = method_of_request(code) {
                            login.allow(method)?;
                        }
                        return Err(protocol(&format!(
                            "authentication request {code} is not supported here"
                        )));
                    }
                },
                b'E' => return Err(server_error(&body)),
                b'Z' if authenticated => return Ok(()),
                b'Z' => return Err(protocol("the server was ready before authentication")),
                // Parameter status, backend key, notices.
                _ => {}
            }
        }
    }

    /// Runs one replication command (or SQL statement) to the end, and
    /// returns the first column of its rows.
    pub async fn command(&mut self, sql: &str) -> Result<Vec<Option<String>>, DbError> {
        frontend::query(sql, &mut self.write).map_err(io_error)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let (tag, mut body) = self.message().await?;
            match tag {
                b'D' => {
                    need(&body, 6)?;
                    let columns = body.get_i16();
                    let len = usize::try_from(body.get_i32()).ok();
                    let value = len.filter(|_| columns > 0).map(|len| {
                        body.get(..len)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .ok_or_else(|| protocol("short data row"))
                    });
                    rows.push(value.transpose()?);
                }
                b'E' => failed = Some(server_error(&body)),
                b'Z' => return failed.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Starts streaming `slot` with pgoutput's `publication`.
    pub async fn start(&mut self, slot: &str, publication: &str) -> Result<(), DbError> {
        let sql = format!(
            "START_REPLICATION SLOT \"{slot}\" LOGICAL 0/0 \
             (proto_version '1', publication_names '\"{publication}\"')"
        );
        frontend::query(&sql, &mut self.write).map_err(io_error)?;
        self.flush().await?;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    /// The next frame of the stream, reading the socket if none is buffered
    /// (cancel-safe).
    pub async fn next(&mut self) -> Result<Frame, DbError> {
        loop {
            let (tag, body) = self.message().await?;
            if let Some(frame) = Self::frame(tag, body)? {
                return Ok(frame);
            }
        }
    }

    /// A frame already read, without waiting.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, DbError> {
        while let Some((tag, body)) = self.buffered_message()? {
            if let Some(frame) = Self::frame(tag, body)? {
                return Ok(Some(frame));
            }
        }
        Ok(None)
    }

    fn frame(tag: u8, mut body: Bytes) -> Result<Option<Frame>, DbError> {
        match tag {
            b'd' if body.first() == Some(&b'w') && body.len() >= 25 => {
                body.advance(1 + 8);
                let end = body.get_u64();
                body.advance(8);
                Ok(Some(Frame::XLogData { end, data: body }))
            }
            b'd' if body.first() == Some(&b'k') && body.len() >= 18 => {
                body.advance(1);
                let end = body.get_u64();
                body.advance(8);
                Ok(Some(Frame::Keepalive {
                    end,
                    reply: body.get_u8() == 1,
                }))
            }
            b'd' => Err(protocol("unexpected copy data")),
            b'E' => Err(server_error(&body)),
            b'c' | b'C' | b'Z' => Err(protocol("the server ended the stream")),
            // Notices and parameter changes.
            _ => Ok(None),
        }
    }

    /// Tells the server that everything up to `lsn` was received and dealt
    /// with, so the slot may let that WAL go.
    pub async fn confirm(&mut self, lsn: u64) -> Result<(), DbError> {
        let mut update = BytesMut::with_capacity(34);
        update.put_u8(b'r');
        update.put_u64(lsn);
        update.put_u64(lsn);
        update.put_u64(lsn);
        update.put_i64(pg_now());
        update.put_u8(0);
        frontend::CopyData::new(update.freeze())
            .map_err(io_error)?
            .write(&mut self.write);
        self.flush().await
    }

    /// Ends the stream, drops `slot` and waits for the server to say so, then
    /// ends the session: when this returns (within [`CLOSE_TIMEOUT`]) the slot
    /// is gone, even if the process exits right after. Had it no time to,
    /// the server drops a temporary slot anyway when the session ends.
    pub async fn close(mut self, slot: &str) {
        let tidy = async {
            frontend::copy_done(&mut self.write);
            self.flush().await?;
            // What was in flight, then the end of the copy and of the command.
            while self.message().await?.0 != b'Z' {}
            self.command(&format!("DROP_REPLICATION_SLOT \"{slot}\""))
                .await
                .map(drop)
        };
        if let Err(e) = tokio::time::timeout(CLOSE_TIMEOUT, tidy)
            .await
            .unwrap_or_else(|_| Err(protocol("timed out")))
        {
            tracing::debug!(error = %e, %slot, "dropping the slot on close; the server drops it with the session");
        }
        frontend::terminate(&mut self.write);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = self.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A frontend 'p' message's body, as text.
    async fn read_password_message(socket: &mut tokio::net::TcpStream) -> String {
        assert_eq!(socket.read_u8().await.unwrap(), b'p');
        let len = socket.read_i32().await.unwrap();
        let mut body = vec![0; len as usize - 4];
        socket.read_exact(&mut body).await.unwrap();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// A fake server on loopback that runs SCRAM up to the client's final
    /// message and then sends `ending` (messages, raw) instead of a
    /// verifiable SASLFinal; returns the address to connect to.
    async fn scram_impostor(ending: Vec<u8>) -> std::net::SocketAddr {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let startup_len = socket.read_i32().await.unwrap();
            let mut startup = vec![0; startup_len as usize - 4];
            socket.read_exact(&mut startup).await.unwrap();
            let mut sasl = 10i32.to_be_bytes().to_vec();
            sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
            socket.write_all(&message(b'R', &sasl)).await.unwrap();
            let first = read_password_message(&mut socket).await;
            let client_nonce = first.split("r=").nth(1).unwrap().to_string();
            let mut server_first = 11i32.to_be_bytes().to_vec();
            server_first.extend_from_slice(
                format!("r={client_nonce}impostor,s=c2FsdHNhbHQ=,i=4096").as_bytes(),
            );
            socket
                .write_all(&message(b'R', &server_first))
                .await
                .unwrap();
            read_password_message(&mut socket).await;
            socket.write_all(&ending).await.unwrap();
            let _ = socket.read_u8().await;
        });
        address
    }

    async fn log_in_to(address: std::net::SocketAddr) -> Result<(), DbError> {
        let url = format!("postgres://u:pw@{address}/db?sslmode=disable");
        Replication::connect(&url, "test").await.map(drop)
    }

    #[tokio::test]
    async fn authentication_ok_without_the_server_signature_is_refused() {
        let mut ending = message(b'R', &0i32.to_be_bytes());
        ending.extend(message(b'Z', b"I"));
        let err = log_in_to(scram_impostor(ending).await)
            .await
            .expect_err("a server that never proved it knows the password");
        assert!(err.to_string().contains("no server signature"), "{err}");
    }

    #[tokio::test]
    async fn a_wrong_server_signature_is_refused() {
        let mut last = 12i32.to_be_bytes().to_vec();
        last.extend_from_slice(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let mut ending = message(b'R', &last);
        ending.extend(message(b'R', &0i32.to_be_bytes()));
        ending.extend(message(b'Z', b"I"));
        let err = log_in_to(scram_impostor(ending).await)
            .await
            .expect_err("a forged signature");
        assert!(err.to_string().contains("replication connection"), "{err}");
    }

    #[test]
    fn error_responses_keep_code_message_detail_and_hint() {
        let body = b"SERROR\0C53400\0Mall replication slots are in use\0HFree one.\0\0";
        match server_error(body) {
            DbError::Statement {
                code,
                message,
                detail,
                hint,
            } => {
                assert_eq!(code, Some(SqlState::CONFIGURATION_LIMIT_EXCEEDED));
                assert_eq!(message, "all replication slots are in use");
                assert_eq!(detail, None);
                assert_eq!(hint.as_deref(), Some("Free one."));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_messages_are_errors_not_panics() {
        assert!(Replication::frame(b'd', Bytes::from_static(b"w\0\0")).is_err());
        assert!(Replication::frame(b'd', Bytes::from_static(b"k")).is_err());
        assert!(take_i32(&mut Bytes::from_static(b"\0\0")).is_err());
    }

    #[test]
    fn frames_are_cut_from_a_buffer_that_holds_partial_messages() {
        let mut xlog = vec![b'w'];
        xlog.extend_from_slice(&1u64.to_be_bytes());
        xlog.extend_from_slice(&0x1234u64.to_be_bytes());
        xlog.extend_from_slice(&0i64.to_be_bytes());
        xlog.extend_from_slice(b"I...");
        let mut keepalive = vec![b'k'];
        keepalive.extend_from_slice(&0x2000u64.to_be_bytes());
        keepalive.extend_from_slice(&0i64.to_be_bytes());
        keepalive.push(1);
        let mut bytes = message(b'd', &xlog);
        bytes.extend(message(b'N', b"SNOTICE\0\0"));
        bytes.extend(message(b'd', &keepalive));

        let (a, b) = bytes.split_at(bytes.len() - 3);
        let mut conn = Replication {
            io: Box::new(tokio::io::duplex(64).0),
            read: BytesMut::from(a),
            write: BytesMut::new(),
        };
        assert_eq!(
            conn.next_buffered().unwrap(),
            Some(Frame::XLogData {
                end: 0x1234,
                data: Bytes::from_static(b"I...")
            })
        );
        assert_eq!(conn.next_buffered().unwrap(), None);
        conn.read.extend_from_slice(b);
        assert_eq!(
            conn.next_buffered().unwrap(),
            Some(Frame::Keepalive {
                end: 0x2000,
                reply: true
            })
        );
    }
}
