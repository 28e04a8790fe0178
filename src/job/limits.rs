//! Limits of one handler, shared by every reactor through `reactor.limits`
//! (see `sql/300_limits.sql` and README, "Limits and fairness"): a cap on
//! attempts in flight, a rate with a burst, a cap per key, and a cap and a
//! rate per route (`sql/310_route_limits.sql`). Settings only;
//! the statements that enforce them are in [`crate::store::limits`] and the
//! claim statement ([`crate::store::pending`]).

/// What a handler is allowed, across all reactors together. All `None`: no
/// limit (claims skip the shared bucket and counts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// At most this many attempts (live leases) at once.
    pub max_in_flight: Option<i32>,
    /// At most this many attempts started per period, with a burst.
    pub rate: Option<Rate>,
    /// The column of the source row whose value is a key (an owner, a
    /// customer): claims take turns between keys, and `max_in_flight_per_key`
    /// caps each.
    pub per_key: Option<String>,
    pub max_in_flight_per_key: Option<i32>,
    /// Limits of each route (an own table's job type), in addition to these:
    /// see [`RouteLimits`].
    pub routes: Option<RouteLimits>,
}

/// Limits per route: `column` holds a row's route (its job type), and each
/// route in `of` has its own cap and rate, shared by every reactor. A route
/// held back by its limits does not hold up the others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteLimits {
    pub column: String,
    pub of: std::collections::BTreeMap<String, RouteLimit>,
}

/// What one route is allowed, across all reactors together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteLimit {
    pub max_in_flight: Option<i32>,
    pub rate: Option<Rate>,
}

impl RouteLimit {
    /// Whether any limit is set (the route gets a `reactor.limits` row).
    pub fn any(&self) -> bool {
        self.max_in_flight.is_some() || self.rate.is_some()
    }
}

/// A token bucket: `per_second` tokens flow in, at most `burst` are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Limits {
    /// Whether any limit of the handler itself is set (it gets a
    /// `reactor.limits` row); route limits are not counted.
    pub fn any(&self) -> bool {
        self.max_in_flight.is_some() || self.rate.is_some() || self.max_in_flight_per_key.is_some()
    }

    /// The column holding a row's route, when some route is limited.
    pub fn route_column(&self) -> Option<&str> {
        self.routes
            .as_ref()
            .filter(|r| r.of.values().any(RouteLimit::any))
            .map(|r| r.column.as_str())
    }
}

/// The `reactor.limits` row of `handler`'s `route`: its name in the snapshot,
/// `/metrics` (`handler` label), the dashboard and `reactor status`.
pub fn route_bucket(handler: &str, route: &str) -> String {
    format!("{handler}[{route}]")
}

/// Parses a rate such as `600/min`, `10/s`, `5000/h` or `1/500ms`: a whole
/// number of attempts per a period.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let example = "examples: 600/min, 10/s, 5000/h";
    let Some((count, period)) = text.split_once('/') else {
        return Err(format!("{text:?} is not a rate ({example})"));
    };
    let count: u64 = count.trim().parse().map_err(|_| {
        format!("{text:?} is not a rate: {count:?} is not a whole number ({example})")
    })?;
    if count == 0 {
        return Err(format!(
            "{text:?} allows nothing: the count must be at least 1"
        ));
    }
    let period = period.trim();
    let seconds = match period {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86400.0,
        other => humantime::parse_duration(other)
            .map_err(|_| format!("{text:?} is not a rate: unknown period {other:?} ({example})"))?
            .as_secs_f64(),
    };
    if seconds <= 0.0 {
        return Err(format!(
            "{text:?} is not a rate: the period must be longer than zero"
        ));
    }
    Ok(count as f64 / seconds)
}

/// Parses a burst: a whole number of attempts at least 1.
pub fn check_burst(burst: i64) -> Result<f64, String> {
    if burst < 1 {
        return Err(format!("is {burst}; it must be at least 1"));
    }
    Ok(burst as f64)
}

/// Checks a cap (`max_in_flight`, `max_in_flight_per_key`): at least 1.
pub fn check_cap(n: i64) -> Result<i32, String> {
    match i32::try_from(n) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "is {n}; it must be a whole number from 1 to {}",
            i32::MAX
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_a_count_per_period() {
        assert_eq!(parse_rate("600/min").unwrap(), 10.0);
        assert_eq!(parse_rate("10/s").unwrap(), 10.0);
        assert_eq!(parse_rate("7200/h").unwrap(), 2.0);
        assert_eq!(parse_rate("1/500ms").unwrap(), 2.0);
        assert!(parse_rate("fast").unwrap_err().contains("is not a rate"));
        assert!(parse_rate("0/min").unwrap_err().contains("at least 1"));
        assert!(parse_rate("ten/min").unwrap_err().contains("whole number"));
        assert!(parse_rate("10/fortnight")
            .unwrap_err()
            .contains("unknown period"));
        assert!(check_cap(0).is_err());
        assert!(check_burst(0).is_err());
    }
}
