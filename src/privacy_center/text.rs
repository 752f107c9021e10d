//! The privacy center's words in English and Dutch, chosen from the
//! browser's `Accept-Language` (or the page's language switch). Segment
//! reasons are shown as the segment file writes them.

use crate::consent::Purpose;
use crate::model::PersonalizationLevel;
use crate::time::{DAY_MS, HOUR_MS};

/// A language of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// English, the default.
    En,
    /// Dutch.
    Nl,
}

impl Lang {
    /// The code in `lang` attributes and the `lang` query parameter.
    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Nl => "nl",
        }
    }

    /// The language named by `code` (`en`, `nl`), if the page has it.
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "en" => Some(Self::En),
            "nl" => Some(Self::Nl),
            _ => None,
        }
    }

    /// The first language of an `Accept-Language` header the page has, by
    /// the header's q-values; English if none.
    pub fn from_accept_language(header: &str) -> Self {
        let mut choices: Vec<(f32, Self)> = header
            .split(',')
            .filter_map(|entry| {
                let mut parts = entry.split(';');
                let tag = parts.next()?.trim().to_ascii_lowercase();
                let quality = parts
                    .find_map(|parameter| parameter.trim().strip_prefix("q="))
                    .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
                let primary = tag.split('-').next()?;
                Some((quality, Self::from_code(primary)?))
            })
            .filter(|(quality, _)| *quality > 0.0)
            .collect();
        // Stable: of equal q-values the header's first wins.
        choices.sort_by(|a, b| b.0.total_cmp(&a.0));
        choices.first().map_or(Self::En, |(_, lang)| *lang)
    }

    /// The page's fixed words in this language.
    pub fn text(self) -> &'static Text {
        match self {
            Self::En => &EN,
            Self::Nl => &NL,
        }
    }
}

/// The fixed words of the page; each field is the words its name says.
pub struct Text {
    /// The language these words are in.
    lang: Lang,
    pub(super) title: &'static str,
    pub(super) intro: &'static str,
    pub(super) other_language: (&'static str, Lang),
    pub(super) refused_title: &'static str,
    pub(super) refused: &'static str,
    pub(super) too_many: &'static str,
    pub(super) unavailable: &'static str,
    pub(super) saving: &'static str,
    pub(super) saved: &'static str,
    pub(super) save_failed: &'static str,
    pub(super) consent_heading: &'static str,
    pub(super) no_consent: &'static str,
    pub(super) granted_heading: &'static str,
    pub(super) nothing_granted: &'static str,
    pub(super) level_label: &'static str,
    pub(super) gpc: &'static str,
    pub(super) why_heading: &'static str,
    pub(super) why_intro: &'static str,
    pub(super) no_segments: &'static str,
    pub(super) member_since: &'static str,
    pub(super) used_on: &'static str,
    pub(super) used_nowhere: &'static str,
    pub(super) held_heading: &'static str,
    pub(super) nothing_held: &'static str,
    pub(super) records: (&'static str, &'static str),
    pub(super) not_done_heading: &'static str,
    pub(super) choices_heading: &'static str,
    pub(super) level_legend: &'static str,
    pub(super) purposes_legend: &'static str,
    pub(super) channels_legend: &'static str,
    pub(super) save: &'static str,
    pub(super) erase_heading: &'static str,
    pub(super) erase_intro: &'static str,
    pub(super) erase: &'static str,
    pub(super) erasing: &'static str,
    pub(super) erased: &'static str,
    pub(super) erase_failed: &'static str,
    pub(super) erase_steps: [&'static str; 4],
    pub(super) done: &'static str,
    pub(super) waiting: &'static str,
    pub(super) months: [&'static str; 12],
}

static EN: Text = Text {
    lang: Lang::En,
    title: "Your data and your choices",
    intro: "What we hold about you, why you see what you see, and switches to change it. Changes take effect within seconds.",
    other_language: ("Nederlands", Lang::Nl),
    refused_title: "This link does not work",
    refused: "This link is not valid or has expired. Ask for a new one where you got it.",
    too_many: "Too many requests from this link. Wait a minute and try again.",
    unavailable: "Your data cannot be shown right now. Try again in a moment.",
    saving: "We are applying your choices. This page updates by itself; until then it shows what was in force before.",
    saved: "Your choices are in force, and what they no longer allow has been deleted.",
    save_failed: "Your choices could not be saved. Nothing was changed; try again.",
    consent_heading: "Your consent",
    no_consent: "You have not given consent, so nothing about you is collected or used.",
    granted_heading: "You allow",
    nothing_granted: "nothing",
    level_label: "Personalization",
    gpc: "Your browser sent a Global Privacy Control signal, so we do not personalize ads for you.",
    why_heading: "Why am I seeing this?",
    why_intro: "The groups you are in, why, and where we may use them.",
    no_segments: "You are in no groups, so nothing is personalized for you.",
    member_since: "since",
    used_on: "Used",
    used_nowhere: "Not used on any channel you allow.",
    held_heading: "What we hold",
    nothing_held: "We hold no data about what you do.",
    records: ("record", "records"),
    not_done_heading: "What we do not do, because you chose so",
    choices_heading: "Change your choices",
    level_legend: "How much personalization do you want?",
    purposes_legend: "What may we use?",
    channels_legend: "Where may we personalize?",
    save: "Save my choices",
    erase_heading: "Delete everything about me",
    erase_intro: "We delete your profile, your data and your consent. Personalization stops until you give consent again.",
    erase: "Delete everything about me",
    erasing: "We are deleting everything about you. This page updates by itself.",
    erased: "Everything about you has been deleted.",
    erase_failed: "The deletion could not be recorded. Nothing was changed; try again.",
    erase_steps: ["Request recorded", "Profile deleted from memory", "Deleted from the published profiles", "Deleted from our stored state"],
    done: "done",
    waiting: "in progress",
    months: [
        "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
        "December",
    ],
};

static NL: Text = Text {
    lang: Lang::Nl,
    title: "Uw gegevens en uw keuzes",
    intro: "Wat we over u bewaren, waarom u ziet wat u ziet, en knoppen om dat te veranderen. Wijzigingen werken binnen enkele seconden.",
    other_language: ("English", Lang::En),
    refused_title: "Deze link werkt niet",
    refused: "Deze link is ongeldig of verlopen. Vraag een nieuwe aan waar u deze kreeg.",
    too_many: "Te veel verzoeken via deze link. Wacht een minuut en probeer het opnieuw.",
    unavailable: "Uw gegevens kunnen nu niet worden getoond. Probeer het zo opnieuw.",
    saving: "We passen uw keuzes toe. Deze pagina werkt zichzelf bij; tot dan toont ze wat eerder gold.",
    saved: "Uw keuzes gelden nu, en wat ze niet meer toestaan is verwijderd.",
    save_failed: "Uw keuzes konden niet worden opgeslagen. Er is niets veranderd; probeer het opnieuw.",
    consent_heading: "Uw toestemming",
    no_consent: "U hebt geen toestemming gegeven, dus we verzamelen en gebruiken niets over u.",
    granted_heading: "U staat toe",
    nothing_granted: "niets",
    level_label: "Personalisatie",
    gpc: "Uw browser stuurde een Global Privacy Control-signaal, dus we personaliseren geen advertenties voor u.",
    why_heading: "Waarom zie ik dit?",
    why_intro: "De groepen waarin u zit, waarom, en waar we ze mogen gebruiken.",
    no_segments: "U zit in geen enkele groep, dus niets wordt voor u gepersonaliseerd.",
    member_since: "sinds",
    used_on: "Gebruikt",
    used_nowhere: "Niet gebruikt in een kanaal dat u toestaat.",
    held_heading: "Wat we bewaren",
    nothing_held: "We bewaren geen gegevens over wat u doet.",
    records: ("vermelding", "vermeldingen"),
    not_done_heading: "Wat we niet doen, omdat u dat koos",
    choices_heading: "Uw keuzes wijzigen",
    level_legend: "Hoeveel personalisatie wilt u?",
    purposes_legend: "Wat mogen we gebruiken?",
    channels_legend: "Waar mogen we personaliseren?",
    save: "Mijn keuzes opslaan",
    erase_heading: "Alles over mij verwijderen",
    erase_intro: "We verwijderen uw profiel, uw gegevens en uw toestemming. Personalisatie stopt tot u opnieuw toestemming geeft.",
    erase: "Alles over mij verwijderen",
    erasing: "We verwijderen alles over u. Deze pagina werkt zichzelf bij.",
    erased: "Alles over u is verwijderd.",
    erase_failed: "Het verwijderen kon niet worden vastgelegd. Er is niets veranderd; probeer het opnieuw.",
    erase_steps: ["Verzoek vastgelegd", "Profiel uit het geheugen verwijderd", "Verwijderd uit de gepubliceerde profielen", "Verwijderd uit onze opgeslagen gegevens"],
    done: "klaar",
    waiting: "bezig",
    months: [
        "januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september", "oktober", "november",
        "december",
    ],
};

impl Text {
    /// A purpose the page has a switch for, in plain words.
    pub fn purpose(&self, purpose: Purpose) -> &'static str {
        match (self.lang, purpose) {
            (Lang::En, Purpose::Personalization) => "Personalization: a profile built from what you view and buy",
            (Lang::En, Purpose::Location) => "Location: where you are, to about 5 km",
            (Lang::En, Purpose::PreciseLocation) => "Precise location: where you are, exactly",
            (Lang::En, Purpose::Sensitive) => "Sensitive categories: purchases such as pharmacy or pregnancy products",
            (Lang::En, Purpose::Measurement) => "Measurement: counting you in tests of what works",
            (Lang::En, Purpose::Web) => "On this website",
            (Lang::En, Purpose::Email) => "In emails",
            (Lang::En, Purpose::Push) => "In push notifications",
            (Lang::En, Purpose::Ads) => "In ads on other sites",
            (Lang::Nl, Purpose::Personalization) => "Personalisatie: een profiel uit wat u bekijkt en koopt",
            (Lang::Nl, Purpose::Location) => "Locatie: waar u bent, tot op ongeveer 5 km",
            (Lang::Nl, Purpose::PreciseLocation) => "Precieze locatie: waar u bent, precies",
            (Lang::Nl, Purpose::Sensitive) => {
                "Gevoelige categorieën: aankopen zoals apotheek- of zwangerschapsproducten"
            }
            (Lang::Nl, Purpose::Measurement) => "Meting: u meetellen in tests van wat werkt",
            (Lang::Nl, Purpose::Web) => "Op deze website",
            (Lang::Nl, Purpose::Email) => "In e-mails",
            (Lang::Nl, Purpose::Push) => "In pushmeldingen",
            (Lang::Nl, Purpose::Ads) => "In advertenties op andere sites",
        }
    }

    /// A channel's short name (`web`, `email`, …) in this language.
    pub fn channel(&self, name: &str) -> String {
        match (self.lang, name) {
            (Lang::En, "web") => "on this website".to_owned(),
            (Lang::En, "email") => "in emails".to_owned(),
            (Lang::En, "push") => "in push notifications".to_owned(),
            (Lang::En, "ads") => "in ads".to_owned(),
            (Lang::Nl, "web") => "op deze website".to_owned(),
            (Lang::Nl, "email") => "in e-mails".to_owned(),
            (Lang::Nl, "push") => "in pushmeldingen".to_owned(),
            (Lang::Nl, "ads") => "in advertenties".to_owned(),
            (_, other) => other.to_owned(),
        }
    }

    /// A personalization level in plain words.
    pub fn level(&self, level: PersonalizationLevel) -> &'static str {
        match (self.lang, level) {
            (Lang::En, PersonalizationLevel::None) => "None: no personalization at all",
            (Lang::En, PersonalizationLevel::Light) => "Light: only simple things, such as new or returning visitor",
            (Lang::En, PersonalizationLevel::Full) => "Full: everything you allow below",
            (Lang::Nl, PersonalizationLevel::None) => "Geen: helemaal geen personalisatie",
            (Lang::Nl, PersonalizationLevel::Light) => {
                "Licht: alleen eenvoudige dingen, zoals nieuwe of terugkerende bezoeker"
            }
            (Lang::Nl, PersonalizationLevel::Full) => "Volledig: alles wat u hieronder toestaat",
        }
    }

    /// "recorded by {source} on {date}".
    pub fn recorded(&self, source: &str, date: &str) -> String {
        match self.lang {
            Lang::En => format!("Recorded by {source} on {date}."),
            Lang::Nl => format!("Vastgelegd door {source} op {date}."),
        }
    }

    /// A UTC date, e.g. "2 December 2026" or "2 december 2026".
    pub fn date(&self, epoch_ms: i64) -> String {
        let (year, month, day) = crate::time::civil_from_days(epoch_ms.div_euclid(DAY_MS));
        format!("{day} {} {year}", self.months[month as usize - 1])
    }

    /// "the last 90 days", "het laatste uur", …
    fn last(&self, window_ms: i64) -> String {
        let days = window_ms / DAY_MS;
        let hours = (window_ms / HOUR_MS).max(1);
        match (self.lang, window_ms < DAY_MS) {
            (Lang::En, true) if hours == 1 => "the last hour".to_owned(),
            (Lang::En, true) => format!("the last {hours} hours"),
            (Lang::En, false) if days == 1 => "the last day".to_owned(),
            (Lang::En, false) => format!("the last {days} days"),
            (Lang::Nl, true) if hours == 1 => "het laatste uur".to_owned(),
            (Lang::Nl, true) => format!("de laatste {hours} uur"),
            (Lang::Nl, false) if days == 1 => "de laatste dag".to_owned(),
            (Lang::Nl, false) => format!("de laatste {days} dagen"),
        }
    }

    /// A category of data held, with how long it is kept.
    pub fn data_kind(&self, kind: crate::explain::DataKind) -> String {
        use crate::explain::DataKind;
        match (self.lang, kind) {
            (Lang::En, DataKind::Browsing { kept_ms }) => format!("Pages you viewed, kept for {}", self.last(kept_ms)),
            (Lang::En, DataKind::Purchases { kept_ms, last }) => {
                format!("Your purchases, kept for {} or your last {last}", self.last(kept_ms))
            }
            (Lang::En, DataKind::SensitivePurchases) => {
                "Purchases in sensitive categories, kept with your explicit consent".to_owned()
            }
            (Lang::En, DataKind::Location { precise: true, kept_ms }) => {
                format!("Your precise location, kept for {}", self.last(kept_ms))
            }
            (Lang::En, DataKind::Location { precise: false, kept_ms }) => {
                format!("Your location to about 5 km, kept for {}", self.last(kept_ms))
            }
            (Lang::Nl, DataKind::Browsing { kept_ms }) => {
                format!("Pagina's die u bekeek, bewaard voor {}", self.last(kept_ms))
            }
            (Lang::Nl, DataKind::Purchases { kept_ms, last }) => {
                format!("Uw aankopen, bewaard voor {} of uw laatste {last}", self.last(kept_ms))
            }
            (Lang::Nl, DataKind::SensitivePurchases) => {
                "Aankopen in gevoelige categorieën, bewaard met uw uitdrukkelijke toestemming".to_owned()
            }
            (Lang::Nl, DataKind::Location { precise: true, kept_ms }) => {
                format!("Uw precieze locatie, bewaard voor {}", self.last(kept_ms))
            }
            (Lang::Nl, DataKind::Location { precise: false, kept_ms }) => {
                format!("Uw locatie tot op ongeveer 5 km, bewaard voor {}", self.last(kept_ms))
            }
        }
    }

    /// What is not done because `purpose` is not granted (or, for the
    /// channels, personalization there); `None` when nothing needs saying.
    pub fn not_done(&self, purpose: Purpose, location_granted: bool) -> Option<String> {
        let text = match (self.lang, purpose) {
            (Lang::En, Purpose::Location) => "We do not use your location.".to_owned(),
            (Lang::En, Purpose::PreciseLocation) if location_granted => {
                "Your location is kept only to about 5 km, never more precisely.".to_owned()
            }
            (Lang::En, Purpose::Sensitive) => {
                "We do not keep or use purchases in sensitive categories, such as pharmacy or pregnancy products.".to_owned()
            }
            (Lang::En, Purpose::Measurement) => "You are not counted in our tests of what works.".to_owned(),
            (Lang::Nl, Purpose::Location) => "We gebruiken uw locatie niet.".to_owned(),
            (Lang::Nl, Purpose::PreciseLocation) if location_granted => {
                "Uw locatie wordt alleen tot op ongeveer 5 km bewaard, nooit preciezer.".to_owned()
            }
            (Lang::Nl, Purpose::Sensitive) => {
                "We bewaren en gebruiken geen aankopen in gevoelige categorieën, zoals apotheek- of zwangerschapsproducten."
                    .to_owned()
            }
            (Lang::Nl, Purpose::Measurement) => "U wordt niet meegeteld in onze tests van wat werkt.".to_owned(),
            (Lang::En, channel) if Purpose::CHANNELS.contains(&channel) => {
                format!("Nothing is personalized for you {}.", self.channel(channel.as_str()))
            }
            (Lang::Nl, channel) if Purpose::CHANNELS.contains(&channel) => {
                format!("Niets wordt voor u gepersonaliseerd {}.", self.channel(channel.as_str()))
            }
            _ => return None,
        };
        Some(text)
    }

    /// What the level being light leaves out.
    pub fn light_only(&self) -> &'static str {
        match self.lang {
            Lang::En => "You chose light personalization: only simple groups, such as new or returning visitor, are used.",
            Lang::Nl => "U koos lichte personalisatie: alleen eenvoudige groepen, zoals nieuwe of terugkerende bezoeker, worden gebruikt.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browsers_preferred_language_is_chosen_by_q_value() {
        assert_eq!(Lang::from_accept_language("nl-NL,nl;q=0.9,en;q=0.8"), Lang::Nl);
        assert_eq!(Lang::from_accept_language("de-DE,en;q=0.5,nl;q=0.7"), Lang::Nl);
        assert_eq!(Lang::from_accept_language("en-GB, nl;q=0.3"), Lang::En);
        assert_eq!(Lang::from_accept_language("fr, de"), Lang::En);
        assert_eq!(Lang::from_accept_language("nl;q=0, en;q=0.1"), Lang::En);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
    }

    /// Dates checked against `date -u -d @<seconds>`.
    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(Lang::En.text().date(0), "1 January 1970");
        assert_eq!(Lang::En.text().date(951_782_400_000), "29 February 2000");
        assert_eq!(Lang::En.text().date(-1), "31 December 1969");
        assert_eq!(Lang::Nl.text().date(1_796_169_600_000), "2 december 2026");
        assert_eq!(Lang::En.text().date(1_796_169_600_000), "2 December 2026");
    }
}
