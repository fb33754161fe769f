//! A GitHub Markdown table: a header row, an alignment row, then one row per item.

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// `---`: text.
    Left,
    /// `---:`: numbers.
    Right,
}

/// A Markdown table under construction; [`Table::render`] appends it to the report.
#[derive(Debug, Clone)]
pub struct Table {
    text: String,
}

impl Table {
    /// A table with these column titles and alignments.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        let mut t = Table { text: String::new() };
        t.row(columns.iter().map(|(title, _)| title.to_string()));
        for (_, align) in columns {
            t.text.push_str(match align {
                Align::Left => "|---",
                Align::Right => "|---:",
            });
        }
        t.text.push_str("|\n");
        t
    }

    /// Adds a row, one cell per column: `| a | b |`.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.text.push('|');
        for c in cells {
            self.text.push(' ');
            self.text.push_str(&c);
            self.text.push_str(" |");
        }
        self.text.push('\n');
    }

    /// Appends the table to `s`.
    pub fn render(self, s: &mut String) {
        s.push_str(&self.text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_header_alignment_and_rows() {
        let mut t = Table::new(&[("pid", Align::Right), ("path", Align::Left)]);
        t.row([42.to_string(), "js.sock".into()]);
        t.row(["7".into(), String::new()]);
        let mut s = String::from("before\n");
        t.render(&mut s);
        assert_eq!(s, "before\n| pid | path |\n|---:|---|\n| 42 | js.sock |\n| 7 |  |\n");
    }

    #[test]
    fn a_table_without_rows_is_its_header() {
        let mut s = String::new();
        Table::new(&[("what", Align::Left)]).render(&mut s);
        assert_eq!(s, "| what |\n|---|\n");
    }
}
