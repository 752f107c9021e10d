//! The privacy center's HTML, rendered on the server: it works without
//! JavaScript (a pending change refreshes the page with a meta refresh),
//! loads nothing from elsewhere and has no inline script or style, so its
//! Content-Security-Policy can forbid both. Pure: a view in, a page out.

use super::link::Link;
use super::text::{Lang, Text};
use crate::consent::Purpose;
use crate::erasure::ErasureStatus;
use crate::explain::Explanation;
use crate::model::PersonalizationLevel;
use std::fmt::Write;

/// What the page says above the data, after a change.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// Nothing was just changed.
    None,
    /// Choices were saved but the pipeline has not applied them yet.
    Saving,
    /// The choices saved are in force.
    Saved,
    /// The choices could not be written to the consent topic.
    SaveFailed,
    /// An erasure's progress.
    Erasure(ErasureStatus),
    /// The erasure could not be recorded.
    EraseFailed,
}

impl Notice {
    /// Whether the page should reload itself to show progress.
    fn pending(&self) -> bool {
        match self {
            Self::Saving => true,
            Self::Erasure(status) => !status.complete,
            _ => false,
        }
    }
}

/// Everything one page shows.
pub struct Page<'a> {
    /// The page's language.
    pub lang: Lang,
    /// The link it was opened with.
    pub link: &'a Link,
    /// The token every form must send back (the same as the page's cookie).
    pub csrf: &'a str,
    /// What is held about the user; `None` = nothing, not even consent.
    pub explanation: Option<&'a Explanation>,
    /// The human description of a segment id.
    pub describe: &'a dyn Fn(&str) -> Option<String>,
    /// The notice after a change.
    pub notice: Notice,
}

/// Seconds between two reloads of a page waiting for a change to apply.
const REFRESH_S: u32 = 2;

/// `text` with the five HTML-special characters escaped.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The opening of every page, up to and including `<main>`.
fn head(out: &mut String, lang: Lang, title: &str, refresh: bool, switch: Option<&Link>) {
    let text = lang.text();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n",
        lang.code()
    );
    if refresh {
        let _ = writeln!(out, "<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">");
    }
    let _ = write!(
        out,
        "<title>{}</title>\n<link rel=\"stylesheet\" href=\"/style.css\">\n</head>\n<body>\n<header>\n",
        escape(title)
    );
    if let Some(link) = switch {
        let (name, other) = text.other_language;
        let _ = writeln!(
            out,
            "<p class=\"language\"><a href=\"/?{}\" hreflang=\"{code}\" lang=\"{code}\">{name}</a></p>",
            escape(&link.query(&[("lang", other.code())])),
            code = other.code()
        );
    }
    let _ = writeln!(out, "<h1>{}</h1>", escape(title));
}

/// A page that refuses: a bad or expired link, too many requests, or the
/// data not reachable now. Says nothing about the user.
pub fn refusal(lang: Lang, message: &str) -> String {
    let text = lang.text();
    let mut out = String::new();
    head(&mut out, lang, text.refused_title, false, None);
    let _ = write!(out, "</header>\n<main>\n<p>{}</p>\n</main>\n</body>\n</html>\n", escape(message));
    out
}

/// The privacy center of one user.
pub fn render(page: &Page<'_>) -> String {
    let text = page.lang.text();
    let mut out = String::with_capacity(8 * 1024);
    head(&mut out, page.lang, text.title, page.notice.pending(), Some(page.link));
    let _ = write!(out, "<p>{}</p>\n</header>\n<main>\n", text.intro);
    notice(&mut out, text, &page.notice);
    let consent = page.explanation.and_then(|explanation| explanation.consent.as_ref());
    let granted = |purpose: Purpose| consent.is_some_and(|consent| consent.granted.contains(&purpose.as_str()));

    // The consent in force.
    let _ = write!(out, "<section aria-labelledby=\"consent\">\n<h2 id=\"consent\">{}</h2>\n", text.consent_heading);
    match consent {
        None => {
            let _ = writeln!(out, "<p id=\"consent-none\">{}</p>", text.no_consent);
        }
        Some(consent) => {
            let _ = write!(
                out,
                "<p><strong>{}:</strong> <span id=\"level\">{}</span></p>\n<p><strong>{}:</strong></p>\n<ul id=\"granted\">\n",
                text.level_label,
                text.level(consent.level),
                text.granted_heading
            );
            let mut any = false;
            for purpose in Purpose::ALL.into_iter().filter(|purpose| granted(*purpose)) {
                let _ = writeln!(out, "<li data-purpose=\"{}\">{}</li>", purpose.as_str(), text.purpose(purpose));
                any = true;
            }
            if !any {
                let _ = writeln!(out, "<li>{}</li>", text.nothing_granted);
            }
            let _ = writeln!(out, "</ul>\n<p>{}</p>", escape(&text.recorded(&consent.source, &text.date(consent.ts))));
            if consent.gpc_opt_out {
                let _ = writeln!(out, "<p>{}</p>", text.gpc);
            }
        }
    }
    out.push_str("</section>\n");

    // Why am I seeing this?
    let _ = write!(
        out,
        "<section aria-labelledby=\"why\">\n<h2 id=\"why\">{}</h2>\n<p>{}</p>\n",
        text.why_heading, text.why_intro
    );
    let memberships =
        page.explanation.and_then(|explanation| explanation.profile.as_ref()).map(|profile| &profile.segments);
    match memberships.filter(|segments| !segments.is_empty()) {
        None => {
            let _ = writeln!(out, "<p id=\"segments-none\">{}</p>", text.no_segments);
        }
        Some(segments) => {
            out.push_str("<ul class=\"segments\">\n");
            for membership in segments {
                let title = (page.describe)(&membership.id).unwrap_or_else(|| membership.id.to_string());
                let used = if membership.channels.is_empty() {
                    text.used_nowhere.to_owned()
                } else {
                    let channels: Vec<String> = membership.channels.iter().map(|name| text.channel(name)).collect();
                    format!("{} {}.", text.used_on, channels.join(", "))
                };
                let _ = write!(
                    out,
                    "<li class=\"segment\" data-segment=\"{id}\">\n<h3>{title}</h3>\n<p class=\"reason\">{reason}</p>\n\
                     <p class=\"meta\">{since_word} {since}. {used}</p>\n</li>\n",
                    id = escape(&membership.id),
                    title = escape(&title),
                    reason = escape(&membership.reason),
                    since_word = capitalised(text.member_since),
                    since = text.date(membership.since),
                    used = escape(&used),
                );
            }
            out.push_str("</ul>\n");
        }
    }
    out.push_str("</section>\n");

    // What is held.
    let _ = write!(out, "<section aria-labelledby=\"held\">\n<h2 id=\"held\">{}</h2>\n", text.held_heading);
    let held = page.explanation.map(|explanation| explanation.data_held.as_slice()).unwrap_or_default();
    if held.is_empty() {
        let _ = writeln!(out, "<p id=\"held-none\">{}</p>", text.nothing_held);
    } else {
        out.push_str("<ul class=\"held\">\n");
        for data in held {
            let _ = writeln!(
                out,
                "<li data-kind=\"{kind}\">{what}; {since_word} {since} ({records} {records_word}).</li>",
                kind = kind_name(data.kind),
                what = escape(&text.data_kind(data.kind)),
                since_word = text.member_since,
                since = text.date(data.since),
                records = data.records,
                records_word = if data.records == 1 { text.records.0 } else { text.records.1 },
            );
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</section>\n");

    // What is not done because of the user's choices.
    if let Some(consent) = consent.filter(|consent| consent.level != PersonalizationLevel::None) {
        let mut lines = Vec::new();
        if consent.level == PersonalizationLevel::Light {
            lines.push(text.light_only().to_owned());
        }
        let location = granted(Purpose::Location);
        for purpose in Purpose::ALL.into_iter().filter(|purpose| !granted(*purpose)) {
            if purpose == Purpose::Ads && consent.gpc_opt_out {
                continue; // Said above.
            }
            lines.extend(text.not_done(purpose, location));
        }
        if !lines.is_empty() {
            let _ = write!(
                out,
                "<section aria-labelledby=\"not-done\">\n<h2 id=\"not-done\">{}</h2>\n<ul id=\"not-done-list\">\n",
                text.not_done_heading
            );
            for line in lines {
                let _ = writeln!(out, "<li>{}</li>", escape(&line));
            }
            out.push_str("</ul>\n</section>\n");
        }
    }

    // The switches.
    let level = consent.map_or(PersonalizationLevel::None, |consent| consent.level);
    let _ = write!(
        out,
        "<section aria-labelledby=\"choices\">\n<h2 id=\"choices\">{}</h2>\n<form method=\"post\" action=\"/choices\">\n",
        text.choices_heading
    );
    hidden_fields(&mut out, page);
    let _ = writeln!(out, "<fieldset>\n<legend>{}</legend>", text.level_legend);
    for (value, choice) in [
        ("none", PersonalizationLevel::None),
        ("light", PersonalizationLevel::Light),
        ("full", PersonalizationLevel::Full),
    ] {
        let _ = writeln!(
            out,
            "<div class=\"choice\"><input type=\"radio\" name=\"level\" id=\"level-{value}\" value=\"{value}\"{checked}>\
             <label for=\"level-{value}\">{label}</label></div>",
            checked = if level == choice { " checked" } else { "" },
            label = text.level(choice),
        );
    }
    out.push_str("</fieldset>\n");
    let purposes = [
        Purpose::Personalization,
        Purpose::Location,
        Purpose::PreciseLocation,
        Purpose::Sensitive,
        Purpose::Measurement,
    ];
    for (legend, group) in [(text.purposes_legend, &purposes[..]), (text.channels_legend, &Purpose::CHANNELS[..])] {
        let _ = writeln!(out, "<fieldset>\n<legend>{legend}</legend>");
        for purpose in group {
            let _ = writeln!(
                out,
                "<div class=\"choice\"><input type=\"checkbox\" name=\"granted\" id=\"granted-{name}\" value=\"{name}\"{checked}>\
                 <label for=\"granted-{name}\">{label}</label></div>",
                name = purpose.as_str(),
                checked = if granted(*purpose) { " checked" } else { "" },
                label = text.purpose(*purpose),
            );
        }
        out.push_str("</fieldset>\n");
    }
    let _ = write!(out, "<button type=\"submit\" id=\"save\">{}</button>\n</form>\n</section>\n", text.save);

    // Erasure.
    let _ = write!(
        out,
        "<section aria-labelledby=\"erase\">\n<h2 id=\"erase\">{}</h2>\n<p>{}</p>\n<form method=\"post\" action=\"/erase\">\n",
        text.erase_heading, text.erase_intro
    );
    hidden_fields(&mut out, page);
    let _ = write!(
        out,
        "<button type=\"submit\" id=\"erase-button\" class=\"danger\">{}</button>\n</form>\n</section>\n</main>\n</body>\n</html>\n",
        text.erase
    );
    out
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn kind_name(kind: crate::explain::DataKind) -> &'static str {
    use crate::explain::DataKind;
    match kind {
        DataKind::Browsing { .. } => "browsing",
        DataKind::Purchases { .. } => "purchases",
        DataKind::SensitivePurchases => "sensitive",
        DataKind::Location { .. } => "location",
    }
}

/// The link and the CSRF token, sent back with a form.
fn hidden_fields(out: &mut String, page: &Page<'_>) {
    for (name, value) in [
        ("user", page.link.user.as_str()),
        ("expires", &page.link.expires.to_string()),
        ("sig", &page.link.sig),
        ("csrf", page.csrf),
        ("lang", page.lang.code()),
    ] {
        let _ = writeln!(out, "<input type=\"hidden\" name=\"{name}\" value=\"{}\">", escape(value));
    }
}

fn notice(out: &mut String, text: &Text, notice: &Notice) {
    let (class, message) = match notice {
        Notice::None => return,
        Notice::Saving => ("pending", text.saving),
        Notice::Saved => ("done", text.saved),
        Notice::SaveFailed => ("failed", text.save_failed),
        Notice::EraseFailed => ("failed", text.erase_failed),
        Notice::Erasure(status) => {
            let message = if status.complete { text.erased } else { text.erasing };
            let _ = write!(
                out,
                "<div class=\"notice {}\" role=\"status\" id=\"notice\">\n<p>{message}</p>\n<ol id=\"erasure-steps\">\n",
                if status.complete { "done" } else { "pending" }
            );
            let steps = [
                status.recorded_at.is_some(),
                status.state_cleared_at.is_some(),
                status.profile_topic_cleared_at.is_some(),
                status.changelog_cleared_at.is_some(),
            ];
            for (label, done) in text.erase_steps.iter().zip(steps) {
                let _ = writeln!(out, "<li>{label}: {}</li>", if done { text.done } else { text.waiting });
            }
            out.push_str("</ol>\n</div>\n");
            return;
        }
    };
    let _ = writeln!(out, "<div class=\"notice {class}\" role=\"status\" id=\"notice\"><p>{message}</p></div>");
}

/// The page's style sheet, served from the page's own origin.
pub const STYLE: &str = "\
:root { color-scheme: light; }
body { font-family: system-ui, sans-serif; line-height: 1.5; color: #1b1b1b; background: #fff; margin: 0 auto; max-width: 46rem; padding: 1rem 1.25rem 3rem; }
h1 { font-size: 1.8rem; margin: 0.5rem 0; }
h2 { font-size: 1.3rem; margin-top: 2rem; border-top: 1px solid #c8c8c8; padding-top: 1rem; }
h3 { font-size: 1.05rem; margin: 0; }
a { color: #0b4fa8; }
a:focus, input:focus, button:focus { outline: 3px solid #0b4fa8; outline-offset: 2px; }
.language { text-align: right; margin: 0; }
.segments { list-style: none; padding: 0; }
.segment { border: 1px solid #c8c8c8; border-radius: 6px; padding: 0.75rem 1rem; margin: 0.75rem 0; }
.reason { margin: 0.25rem 0; }
.meta { color: #4a4a4a; font-size: 0.95rem; margin: 0; }
.notice { border-left: 6px solid #0b4fa8; background: #eef3fb; padding: 0.5rem 1rem; margin: 1rem 0; }
.notice.done { border-color: #1e6b32; background: #edf7ef; }
.notice.failed { border-color: #a4161a; background: #fbeeee; }
fieldset { border: 1px solid #c8c8c8; border-radius: 6px; margin: 1rem 0; padding: 0.5rem 1rem; }
legend { font-weight: 600; padding: 0 0.25rem; }
.choice { display: flex; gap: 0.5rem; align-items: flex-start; margin: 0.4rem 0; }
.choice input { width: 1.2rem; height: 1.2rem; margin-top: 0.2rem; flex: none; }
button { font: inherit; padding: 0.5rem 1.1rem; border-radius: 6px; border: 2px solid #0b4fa8; background: #0b4fa8; color: #fff; cursor: pointer; }
button.danger { border-color: #a4161a; background: #a4161a; }
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{ConsentView, DataHeld, DataKind, ProfileView};
    use crate::model::Membership;

    fn explanation(user: &str, reason: &str) -> Explanation {
        Explanation {
            user_id: user.to_owned(),
            consent: Some(ConsentView {
                granted: vec!["personalization", "location", "web"],
                level: PersonalizationLevel::Full,
                source: "cmp <web>".to_owned(),
                ts: 1_796_169_600_000,
                gpc_opt_out: false,
            }),
            profile: Some(ProfileView {
                level: PersonalizationLevel::Full,
                channels: vec!["web".into()].into(),
                segments: vec![Membership {
                    id: "near_store".into(),
                    since: 1_796_169_600_000,
                    reason: reason.to_owned(),
                    channels: vec!["web".into()].into(),
                    arm: None,
                }],
            }),
            data_held: vec![DataHeld {
                category: String::new(),
                since: 1_796_169_600_000,
                records: 3,
                kind: DataKind::Location { precise: false, kept_ms: 3_600_000 },
            }],
        }
    }

    fn render_for(user: &str, reason: &str, lang: Lang, notice: Notice) -> String {
        let link = Link { user: user.to_owned(), expires: 1_900_000_000, sig: "ab".repeat(32) };
        let explanation = explanation(user, reason);
        let describe = |_: &str| Some("Near a store".to_owned());
        render(&Page {
            lang,
            link: &link,
            csrf: "c".repeat(32).as_str(),
            explanation: Some(&explanation),
            describe: &describe,
            notice,
        })
    }

    #[test]
    fn everything_from_outside_is_escaped_and_nothing_inline_needs_the_csp_relaxed() {
        let page = render_for("\"><script>alert(1)</script>", "Was <b>near</b> & \"there\"", Lang::En, Notice::None);
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""), "{page}");
        assert!(page.contains("<p class=\"reason\">Was &lt;b&gt;near&lt;/b&gt; &amp; &quot;there&quot;</p>"), "{page}");
        assert!(page.contains("Recorded by cmp &lt;web&gt; on 2 December 2026."), "{page}");
        assert!(!page.contains(" style=") && !page.contains("<style"), "{page}");
        // No event handler attribute (` onclick=`, …).
        let handler = page.split(" on").skip(1).any(|rest| {
            let name = rest.chars().take_while(char::is_ascii_alphabetic).count();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "{page}");
    }

    #[test]
    fn the_page_says_what_is_held_what_is_not_done_and_shows_the_switches_as_in_force() {
        let page = render_for("u-1", "Was near.", Lang::En, Notice::None);
        assert!(page.contains("<li data-kind=\"location\">Your location to about 5 km, kept for the last hour; since 2 December 2026 (3 records).</li>"), "{page}");
        assert!(page.contains("<li>Your location is kept only to about 5 km, never more precisely.</li>"), "{page}");
        assert!(page.contains("<li>Nothing is personalized for you in emails.</li>"), "{page}");
        assert!(page.contains("id=\"granted-location\" value=\"location\" checked>"), "{page}");
        assert!(page.contains("id=\"granted-precise_location\" value=\"precise_location\">"), "{page}");
        assert!(page.contains("id=\"level-full\" value=\"full\" checked>"), "{page}");
        assert!(page.contains("<p class=\"meta\">Since 2 December 2026. Used on this website.</p>"), "{page}");
        assert!(!page.contains("http-equiv=\"refresh\""));
        let dutch = render_for("u-1", "Was near.", Lang::Nl, Notice::Saving);
        assert!(dutch.contains("<html lang=\"nl\">") && dutch.contains("http-equiv=\"refresh\""), "{dutch}");
        assert!(
            dutch.contains(
                "Uw locatie tot op ongeveer 5 km, bewaard voor het laatste uur; sinds 2 december 2026 (3 vermeldingen)."
            ),
            "{dutch}"
        );
        assert!(dutch.contains("<a href=\"/?user=u-1&amp;expires=1900000000&amp;sig="), "{dutch}");
        assert!(dutch.contains("&amp;lang=en\" hreflang=\"en\" lang=\"en\">English</a>"), "{dutch}");
    }
}
