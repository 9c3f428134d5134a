//! Names for the generated catalog and population: real REES46 brand names and category codes at
//! the head, and the 16 Polish voivodeships with real city names (the original system's users).

/// The most frequent brands of the December 2019 file, most frequent first.
pub const TOP_BRANDS: &[&str] = &[
    "samsung",
    "apple",
    "xiaomi",
    "huawei",
    "lucente",
    "cordiant",
    "lg",
    "bosch",
    "oppo",
    "sony",
    "acer",
    "lenovo",
    "artel",
    "respect",
    "hp",
    "elenberg",
    "casio",
    "redmond",
    "asus",
    "vitek",
    "midea",
    "indesit",
    "polaris",
    "tefal",
    "philips",
    "canon",
    "nokia",
    "jbl",
    "honor",
    "atlant",
    "nike",
    "adidas",
    "gorenje",
    "beko",
    "karcher",
    "makita",
    "dewalt",
    "tp-link",
    "sv",
    "janome",
    "bioderma",
    "ariston",
    "pioneer",
    "kenwood",
    "braun",
    "rowenta",
    "delonghi",
    "garmin",
    "gopro",
    "intel",
    "amd",
    "nvidia",
    "logitech",
    "defender",
    "sven",
    "dauscher",
    "marshall",
    "sharp",
    "vivo",
    "meizu",
    "tcl",
    "hyundai",
    "haier",
    "electrolux",
    "whirlpool",
    "zanussi",
    "scarlett",
    "maxwell",
    "saturn",
];

/// Category codes seen in the public files (a representative subset).
pub const CATEGORY_CODES: &[&str] = &[
    "electronics.smartphone",
    "electronics.audio.headphone",
    "electronics.audio.subwoofer",
    "electronics.video.tv",
    "electronics.clocks",
    "electronics.tablet",
    "electronics.telephone",
    "electronics.camera.photo",
    "electronics.camera.video",
    "computers.notebook",
    "computers.desktop",
    "computers.peripherals.printer",
    "computers.peripherals.monitor",
    "computers.peripherals.mouse",
    "computers.peripherals.keyboard",
    "computers.components.videocards",
    "computers.components.cpu",
    "computers.components.memory",
    "computers.network.router",
    "appliances.kitchen.refrigerators",
    "appliances.kitchen.washer",
    "appliances.kitchen.microwave",
    "appliances.kitchen.kettle",
    "appliances.kitchen.blender",
    "appliances.kitchen.oven",
    "appliances.kitchen.hood",
    "appliances.kitchen.coffee_machine",
    "appliances.environment.vacuum",
    "appliances.environment.air_conditioner",
    "appliances.environment.water_heater",
    "appliances.environment.fan",
    "appliances.iron",
    "appliances.sewing_machine",
    "appliances.personal.massager",
    "appliances.personal.hair_cutter",
    "appliances.personal.scales",
    "apparel.shoes",
    "apparel.shoes.sandals",
    "apparel.shoes.keds",
    "apparel.trousers",
    "apparel.costume",
    "apparel.jeans",
    "apparel.shirt",
    "auto.accessories.player",
    "auto.accessories.videoregister",
    "auto.accessories.compressor",
    "furniture.living_room.sofa",
    "furniture.living_room.cabinet",
    "furniture.bedroom.bed",
    "furniture.kitchen.table",
    "furniture.bathroom.bath",
    "kids.toys",
    "kids.carriage",
    "kids.skates",
    "construction.tools.drill",
    "construction.tools.light",
    "construction.tools.saw",
    "construction.components.faucet",
    "sport.bicycle",
    "sport.tennis",
    "sport.ski",
    "country_yard.lawn_mower",
    "country_yard.cultivator",
    "accessories.bag",
    "accessories.wallet",
    "accessories.umbrella",
    "medicine.tools.tonometer",
    "stationery.cartrige",
];

/// Syllables for the long tail of brand names.
const SYLLABLES: &[&str] =
    &["ka", "lo", "mi", "re", "su", "to", "va", "ne", "zi", "po", "de", "ri", "xo", "bel", "tor", "fan", "gra", "vel"];

/// The `i`-th tail brand name: a unique syllable spelling of `i` (bijective base-18 digits).
pub fn tail_brand(mut i: usize) -> String {
    let mut name = String::new();
    loop {
        name.push_str(SYLLABLES[i % SYLLABLES.len()]);
        i /= SYLLABLES.len();
        if i == 0 {
            break;
        }
        i -= 1;
    }
    name
}

/// The 16 voivodeships with their share of Poland's population and a few real cities each.
pub const REGIONS: &[(&str, f64, &[&str])] = &[
    ("mazowieckie", 14.2, &["Warszawa", "Radom", "Płock", "Siedlce"]),
    ("śląskie", 11.7, &["Katowice", "Częstochowa", "Sosnowiec", "Gliwice"]),
    ("wielkopolskie", 9.1, &["Poznań", "Kalisz", "Konin", "Piła"]),
    ("małopolskie", 8.9, &["Kraków", "Tarnów", "Nowy Sącz"]),
    ("dolnośląskie", 7.5, &["Wrocław", "Wałbrzych", "Legnica"]),
    ("łódzkie", 6.3, &["Łódź", "Piotrków Trybunalski", "Pabianice"]),
    ("pomorskie", 6.1, &["Gdańsk", "Gdynia", "Słupsk"]),
    ("podkarpackie", 5.5, &["Rzeszów", "Przemyśl", "Stalowa Wola"]),
    ("lubelskie", 5.5, &["Lublin", "Chełm", "Zamość"]),
    ("kujawsko-pomorskie", 5.4, &["Bydgoszcz", "Toruń", "Włocławek"]),
    ("zachodniopomorskie", 4.4, &["Szczecin", "Koszalin", "Stargard"]),
    ("warmińsko-mazurskie", 3.7, &["Olsztyn", "Elbląg", "Ełk"]),
    ("świętokrzyskie", 3.2, &["Kielce", "Ostrowiec Świętokrzyski"]),
    ("podlaskie", 3.1, &["Białystok", "Suwałki", "Łomża"]),
    ("lubuskie", 2.6, &["Zielona Góra", "Gorzów Wielkopolski"]),
    ("opolskie", 2.5, &["Opole", "Kędzierzyn-Koźle"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_brand_names_are_unique() {
        let names: std::collections::HashSet<String> = (0..20_000).map(tail_brand).collect();
        assert_eq!(names.len(), 20_000);
        assert_eq!(REGIONS.len(), 16);
    }
}
