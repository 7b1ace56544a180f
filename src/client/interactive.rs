//! The original Proxy CLI's menus: pick a server from a numbered table, pick its NIC when it
//! has several, the router chosen when exactly one with a gateway has an interface on that
//! network (else pick one), see the server's mappings on that router, answer the ports,
//! confirm; then the result table. The same for changing and deleting a mapping.
//!
//! Menus and questions go to standard error, results to standard output; answers are read a
//! line at a time from standard input, which must be a terminal (else the command says which
//! option is missing and what the candidates are).

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};

use super::cloud::{Port, Server};
use super::output::{table, Listing};
use super::ClientError;

/// Where questions are asked and answered.
pub struct Dialog<'a> {
    input: Box<dyn BufRead + 'a>,
    output: Box<dyn Write + 'a>,
}

impl<'a> Dialog<'a> {
    /// The process's terminal: questions on standard error, answers from standard input.
    pub fn terminal() -> Option<Dialog<'static>> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        Some(Dialog {
            input: Box::new(std::io::BufReader::new(std::io::stdin())),
            output: Box::new(std::io::stderr()),
        })
    }

    /// A dialog over given streams (tests).
    pub fn over(input: impl BufRead + 'a, output: impl Write + 'a) -> Dialog<'a> {
        Dialog {
            input: Box::new(input),
            output: Box::new(output),
        }
    }

    pub fn say(&mut self, text: &str) -> Result<(), ClientError> {
        self.output
            .write_all(text.as_bytes())
            .and_then(|_| self.output.flush())
            .map_err(ClientError::Terminal)
    }

    /// Asks `question`; `None` at the end of the input.
    pub fn ask(&mut self, question: &str) -> Result<Option<String>, ClientError> {
        self.say(question)?;
        let mut line = String::new();
        let n = self
            .input
            .read_line(&mut line)
            .map_err(ClientError::Terminal)?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim().to_string()))
    }

    /// Asks until the answer is given (`default` for an empty one, when there is one).
    pub fn ask_required(
        &mut self,
        question: &str,
        default: Option<&str>,
    ) -> Result<String, ClientError> {
        loop {
            match self.ask(question)? {
                None => return Err(cancelled()),
                Some(a) if a.is_empty() => match default {
                    Some(d) => return Ok(d.to_string()),
                    None => continue,
                },
                Some(a) => return Ok(a),
            }
        }
    }

    /// Shows `rows` numbered from 1 under `headers` and asks for one; an answer may also be
    /// the first cell (a name). Returns its index.
    pub fn choose(
        &mut self,
        what: &str,
        headers: &[&str],
        rows: &[Vec<String>],
    ) -> Result<usize, ClientError> {
        let mut h = vec!["#"];
        h.extend(headers);
        let numbered: Vec<Vec<String>> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut row = vec![(i + 1).to_string()];
                row.extend(r.iter().cloned());
                row
            })
            .collect();
        self.say(&table(&h, &numbered, None))?;
        loop {
            let Some(answer) = self.ask(&format!("{what} [1-{}]: ", rows.len()))? else {
                return Err(cancelled());
            };
            if let Ok(n) = answer.parse::<usize>() {
                if (1..=rows.len()).contains(&n) {
                    return Ok(n - 1);
                }
            }
            let named: Vec<usize> = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| r.first().is_some_and(|c| *c == answer))
                .map(|(i, _)| i)
                .collect();
            if let [one] = named.as_slice() {
                return Ok(*one);
            }
            self.say(&format!(
                "  answer a number from 1 to {}{}\n",
                rows.len(),
                if named.len() > 1 {
                    " (that name is not unique)"
                } else {
                    ""
                }
            ))?;
        }
    }

    /// Asks a yes/no question; no unless answered yes.
    pub fn confirm(&mut self, question: &str) -> Result<bool, ClientError> {
        let answer = self
            .ask(&format!("{question} [y/N]: "))?
            .unwrap_or_default();
        Ok(matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes"))
    }
}

fn cancelled() -> ClientError {
    ClientError::Usage {
        message: "cancelled: the input ended before every question was answered".into(),
    }
}

/// The server rows of a menu: name, status, addresses.
pub fn server_rows(servers: &[Server]) -> Vec<Vec<String>> {
    servers
        .iter()
        .map(|s| vec![s.name.clone(), s.status.clone(), s.addresses_text()])
        .collect()
}

/// The NIC rows of a menu: port, network, addresses.
pub fn port_rows(ports: &[Port], networks: &HashMap<String, String>) -> Vec<Vec<String>> {
    ports
        .iter()
        .map(|p| {
            vec![
                if p.name.is_empty() {
                    p.id.clone()
                } else {
                    p.name.clone()
                },
                networks
                    .get(&p.network_id)
                    .cloned()
                    .unwrap_or_else(|| p.network_id.clone()),
                p.ipv4()
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect()
}

/// The original's result table of one mapping (or more): the listing's columns.
pub fn result_table(listing: &Listing) -> String {
    let cells: Vec<Vec<String>> = listing
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    let headers: Vec<&str> = listing.columns.iter().map(String::as_str).collect();
    table(&headers, &cells, None)
}

/// `ranges` as one line: `4000:4016, 4018:4100` (or `none`).
pub fn ranges_text(ranges: &Option<Vec<String>>) -> String {
    match ranges.as_deref() {
        Some([]) | None => "none".into(),
        Some(r) => r.join(", "),
    }
}

/// A JSON cell of a menu row.
pub fn cell(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_choice_is_asked_again_until_it_is_a_number_of_the_menu_or_a_name() {
        let mut out = vec![];
        let rows = vec![
            vec!["web".to_string(), "ACTIVE".to_string()],
            vec!["db".to_string(), "ACTIVE".to_string()],
        ];
        {
            let mut d = Dialog::over("7\nx\n2\n".as_bytes(), &mut out);
            assert_eq!(d.choose("Server", &["Name", "Status"], &rows).unwrap(), 1);
        }
        {
            let mut d = Dialog::over("web\n".as_bytes(), &mut out);
            assert_eq!(d.choose("Server", &["Name", "Status"], &rows).unwrap(), 0);
        }
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("| 2 | db   | ACTIVE |"), "{shown}");
        assert!(shown.contains("answer a number from 1 to 2"), "{shown}");
    }

    #[test]
    fn the_end_of_the_input_cancels_and_only_yes_confirms() {
        let mut d = Dialog::over("".as_bytes(), std::io::sink());
        assert!(d.ask_required("Port: ", None).is_err());
        let mut d = Dialog::over("\n\n22\n".as_bytes(), std::io::sink());
        assert_eq!(d.ask_required("Port: ", None).unwrap(), "22");
        let mut d = Dialog::over("\n".as_bytes(), std::io::sink());
        assert_eq!(
            d.ask_required("Protocol [tcp]: ", Some("tcp")).unwrap(),
            "tcp"
        );
        let mut d = Dialog::over("yes\nn\n\n".as_bytes(), std::io::sink());
        assert!(d.confirm("Create?").unwrap());
        assert!(!d.confirm("Create?").unwrap());
        assert!(!d.confirm("Create?").unwrap());
    }
}
