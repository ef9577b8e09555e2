//! Limits on SQL text, checked before anything parses it.
//!
//! sqlparser bounds its own recursion (nested parentheses, prefix operators), but it reads a
//! chain of binary operators (`1 + 1 + … + 1`) in a loop and builds a left-deep tree, which
//! planning, optimisation and even dropping then walk recursively: 2,000 terms overflowed a
//! thread's stack and aborted the process. The chain depth is bounded here on tokens, with
//! no recursion, and the SQL threads get a stack large enough for any text that passes.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Longest SQL text accepted (bytes).
pub const MAX_SQL_BYTES: usize = 1 << 20;
/// Deepest expression accepted: binary operators chained at one level, summed over enclosing
/// parentheses, plus the parentheses themselves.
pub const MAX_EXPRESSION_DEPTH: usize = 1024;
/// Stack of every thread that parses, plans or runs SQL. A chain at [`MAX_EXPRESSION_DEPTH`]
/// runs with room to spare, unoptimised (`readonly::plan_tests::deepest_accepted_expression_plans_and_runs`).
pub const SQL_THREAD_STACK_BYTES: usize = 64 << 20;

/// How a refusal for a text that does not tokenise (an unterminated string, say) begins: a
/// syntax error, not a limit.
pub const SYNTAX_PREFIX: &str = "SQL syntax: ";

/// Why a text is refused before parsing, or `Ok`.
pub fn check(sql: &str) -> Result<(), String> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(format!("SQL text of {} bytes is longer than the {MAX_SQL_BYTES} bytes accepted", sql.len()));
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().map_err(|e| format!("{SYNTAX_PREFIX}{e}"))?;
    let depth = expression_depth(&tokens);
    if depth > MAX_EXPRESSION_DEPTH {
        return Err(format!(
            "expression nested {depth} levels deep; at most {MAX_EXPRESSION_DEPTH} are accepted (split long chains of operators, e.g. into IN lists or sums over rows)"
        ));
    }
    Ok(())
}

/// An upper bound of the expression tree depth the parser will build from `tokens`.
fn expression_depth(tokens: &[Token]) -> usize {
    // Operators since the last separator, per open parenthesis (index 0: top level).
    let mut levels: Vec<usize> = vec![0];
    let mut deepest = 0;
    for t in tokens {
        match t {
            Token::LParen | Token::LBracket => levels.push(0),
            Token::RParen | Token::RBracket => {
                if levels.len() > 1 {
                    levels.pop();
                }
            }
            Token::Comma | Token::SemiColon => *levels.last_mut().expect("top level") = 0,
            Token::Word(w) => match w.keyword {
                // Words that join two operands into one node.
                Keyword::AND | Keyword::OR | Keyword::XOR | Keyword::IS | Keyword::LIKE | Keyword::ILIKE | Keyword::SIMILAR | Keyword::BETWEEN | Keyword::IN | Keyword::COLLATE | Keyword::AT => {
                    *levels.last_mut().expect("top level") += 1
                }
                // Words that start a new, separate expression.
                Keyword::SELECT | Keyword::FROM | Keyword::WHERE | Keyword::GROUP | Keyword::HAVING | Keyword::ORDER | Keyword::LIMIT | Keyword::OFFSET | Keyword::ON | Keyword::WHEN | Keyword::THEN | Keyword::ELSE | Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT => {
                    *levels.last_mut().expect("top level") = 0
                }
                _ => {}
            },
            Token::Whitespace(_) | Token::Number(..) | Token::Char(_) | Token::Period | Token::Colon | Token::EOF => {}
            // Literals (any left out here only make the bound more cautious).
            Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_) => {}
            // Every other token is an operator or punctuation that can join operands.
            _ => *levels.last_mut().expect("top level") += 1,
        }
        let depth = levels.iter().sum::<usize>() + levels.len() - 1;
        deepest = deepest.max(depth);
    }
    deepest
}

/// A runtime whose threads have [`SQL_THREAD_STACK_BYTES`] of stack.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_stack_size(SQL_THREAD_STACK_BYTES)
        .enable_all()
        .thread_name("co2cast-sql")
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> String {
        format!("SELECT {}", vec!["1"; n].join(" + "))
    }

    #[test]
    fn chains_are_bounded_and_lists_are_not() {
        assert!(check(&chain(MAX_EXPRESSION_DEPTH)).is_ok());
        let e = check(&chain(2_000)).unwrap_err();
        assert!(e.contains("nested") && e.contains("levels deep"), "{e}");
        // Long flat lists are not deep.
        let list = format!("SELECT * FROM t WHERE province IN ({})", (0..5_000).map(|i| format!("'p{i}'")).collect::<Vec<_>>().join(", "));
        assert!(check(&list).is_ok());
        let cols = format!("SELECT {}", (0..3_000).map(|i| format!("a{i} + b{i} AS c{i}")).collect::<Vec<_>>().join(", "));
        assert!(check(&cols).is_ok());
        // Depth adds up through parentheses.
        let nested = format!("SELECT {}1{}", "(1 + ".repeat(600), ")".repeat(600));
        assert!(check(&nested).is_err());
        // AND chains count like arithmetic ones.
        let ands = format!("SELECT 1 WHERE {}", (0..600).map(|i| format!("x = {i}")).collect::<Vec<_>>().join(" AND "));
        assert!(check(&ands).is_err());
        assert!(check(&"x".repeat(MAX_SQL_BYTES + 1)).is_err());
    }
}
