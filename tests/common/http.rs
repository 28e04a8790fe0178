//! Loopback HTTP for tests: a server standing in for the provider's file
//! delivery, and the client side of the reactor's own HTTP API.

/// Width and height of the pictures the image server returns.
pub const IMAGE_SIZE: (u32, u32) = (96, 64);

fn picture() -> image::RgbImage {
    image::RgbImage::from_fn(IMAGE_SIZE.0, IMAGE_SIZE.1, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    })
}

/// A real JPEG (the renders handler decodes it to make the thumbnail).
pub static JPEG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut out)
        .encode_image(&picture())
        .expect("encode the test JPEG");
    out
});

/// A real PNG of the same picture.
pub static PNG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut out = std::io::Cursor::new(Vec::new());
    picture()
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode the test PNG");
    out.into_inner()
});

/// Starts like a JPEG (the magic bytes pass) but does not decode.
pub const CORRUPT_JPEG: &[u8] = &[
    0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0xFF, 0xD9,
];

pub struct ImageServer {
    pub base: String,
    /// Requests seen per path.
    pub hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl ImageServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits(&self, path: &str) -> u32 {
        *self.hits.lock().unwrap().get(path).unwrap_or(&0)
    }
}

/// Routes: `/ok/{name}` a JPEG, `/png/{name}` a PNG, `/corrupt/{name}` a JPEG
/// that does not decode, `/missing/{name}` 404,
/// `/html/{name}` an HTML page, `/slow/{name}` a JPEG after 30 s,
/// `/flaky/{fails}/{name}` HTTP 500 for the first `fails` requests then a JPEG,
/// `/big/{name}` a 2 MiB JPEG, `/delay/{ms}/{name}` a JPEG after `ms` milliseconds.
pub async fn image_server() -> ImageServer {
    use axum::extract::{Path, State};
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    type Hits = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>;

    async fn serve(
        State(hits): State<Hits>,
        Path((kind, rest)): Path<(String, String)>,
    ) -> axum::response::Response {
        let path = format!("/{kind}/{rest}");
        let n = {
            let mut h = hits.lock().unwrap();
            let e = h.entry(path).or_insert(0);
            *e += 1;
            *e
        };
        let jpeg = || ([(header::CONTENT_TYPE, "image/jpeg")], JPEG.to_vec()).into_response();
        match kind.as_str() {
            "ok" => jpeg(),
            "png" => ([(header::CONTENT_TYPE, "image/png")], PNG.to_vec()).into_response(),
            "corrupt" => (
                [(header::CONTENT_TYPE, "image/jpeg")],
                CORRUPT_JPEG.to_vec(),
            )
                .into_response(),
            "missing" => StatusCode::NOT_FOUND.into_response(),
            "html" => (
                [(header::CONTENT_TYPE, "text/html")],
                "<html>not an image</html>",
            )
                .into_response(),
            "delay" => {
                let ms: u64 = rest
                    .split('/')
                    .next()
                    .and_then(|f| f.parse().ok())
                    .unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                jpeg()
            }
            "slow" => {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                jpeg()
            }
            "flaky" => {
                let fails: u32 = rest
                    .split('/')
                    .next()
                    .and_then(|f| f.parse().ok())
                    .unwrap_or(0);
                if n <= fails {
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                } else {
                    jpeg()
                }
            }
            "big" => {
                let mut body = JPEG.to_vec();
                body.resize(2 * 1024 * 1024, 0);
                ([(header::CONTENT_TYPE, "image/jpeg")], body).into_response()
            }
            _ => StatusCode::BAD_REQUEST.into_response(),
        }
    }

    let hits: Hits = Default::default();
    let app = axum::Router::new()
        .route("/{kind}/{*rest}", axum::routing::get(serve))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind image server");
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    ImageServer { base, hits }
}

// ---------------------------------------------------------------------------
// The reactor's own HTTP API, as operators and users call it

/// The admin token tests give the reactor.
pub const ADMIN: &str = "admin-token-for-tests";
/// The Supabase JWT secret tests give the reactor (users' tokens are signed with it).
pub const JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";

/// Starts the reactor in-process with its HTTP API open to `ADMIN` and to
/// users' tokens signed with `JWT_SECRET`.
pub async fn start_reactor_with_tokens(
    db: &super::TestDb,
    storage: &std::path::Path,
) -> super::InProcess {
    super::start_reactor(
        db,
        storage,
        &["--admin-token", ADMIN, "--supabase-jwt-secret", JWT_SECRET],
    )
    .await
}

/// A Supabase access token for `user`, signed with `secret`, that expires
/// `expires_in` seconds from now (negative: already expired).
pub fn user_token(user: uuid::Uuid, secret: &str, expires_in: i64) -> String {
    let claims = serde_json::json!({"sub": user.to_string(), "aud": "authenticated", "role": "authenticated",
                        "exp": chrono::Utc::now().timestamp() + expires_in});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Reads server-sent events (kind, data) from `response` until `done` says
/// so or the stream ends; panics after a minute.
pub async fn read_events(
    response: &mut reqwest::Response,
    mut done: impl FnMut(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done(&events) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("events in time; so far {events:?}"))
            .unwrap();
        let Some(chunk) = chunk else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut kind = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            if !data.is_empty() {
                events.push((
                    kind,
                    serde_json::from_str(&data).unwrap_or(serde_json::json!(data)),
                ));
            }
        }
    }
    events
}
