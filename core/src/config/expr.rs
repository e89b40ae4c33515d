//! The small expression language of `pipelines.yaml`: view filters, measure
//! `where` clauses, derived group-by keys and label rules.
//!
//! ```text
//! status = 'placed'
//! lifetime_value_cents >= 100000 and order_count >= 2
//! currency in ('USD', 'EUR')
//! date(created_at) >= '2024-03-01'
//! ```
//!
//! Expressions are parsed and type-checked against a [`Scope`] (a relation's
//! fields, or a view's output fields) when the config is checked, so a typo
//! is an error with its column, not a wrong number at run time.

use std::fmt;

use crate::relation::ValueRef;
use crate::value::{FieldType, Timestamp, Value, date_month, date_year, parse_date};

/// The fields an expression may name, with their types.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    fields: Vec<(String, FieldType)>,
    /// What the fields belong to, for messages ("relation 'orders'").
    what: String,
}

impl Scope {
    /// A scope over `fields`, described as `what` in messages.
    pub fn new(what: impl Into<String>, fields: impl IntoIterator<Item = (String, FieldType)>) -> Scope {
        Scope { fields: fields.into_iter().collect(), what: what.into() }
    }

    /// Index and type of a field.
    pub fn lookup(&self, name: &str) -> Option<(usize, FieldType)> {
        self.fields.iter().position(|(n, _)| n == name).map(|i| (i, self.fields[i].1))
    }

    /// The field names, comma separated, for "allowed" lists.
    pub fn names(&self) -> String {
        self.fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// What the fields belong to.
    pub fn what(&self) -> &str {
        &self.what
    }
}

/// An error in an expression, at a character offset into its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// Character offset into the expression text.
    pub offset: usize,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn error<T>(offset: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError { offset, message: message.into() })
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=` or `==`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A function of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    /// `date(timestamp)`: the UTC date.
    Date,
    /// `month(timestamp | date)`: `YYYY-MM`.
    Month,
    /// `year(timestamp | date)`: the year as an integer.
    Year,
}

const FUNCTIONS: &str = "date(timestamp), month(timestamp or date), year(timestamp or date)";

/// A type-checked expression, ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A field of the scope, by index.
    Field(usize),
    /// A constant.
    Literal(Value),
    /// A function applied to one argument.
    Call(Func, Box<Expr>),
    /// A comparison; false when either side is null.
    Compare(CmpOp, Box<Expr>, Box<Expr>),
    /// Membership in a list of constants.
    In(Box<Expr>, Vec<Value>, bool),
    /// `is null` / `is not null`.
    IsNull(Box<Expr>, bool),
    /// All true.
    And(Vec<Expr>),
    /// Any true.
    Or(Vec<Expr>),
    /// Negation.
    Not(Box<Expr>),
}

/// Where an expression reads its fields from.
pub trait FieldSource<'a> {
    /// The value of field `index` of the scope the expression was checked in.
    fn field(&self, index: usize) -> ValueRef<'a>;

    /// The same value, owned; sources that hold shared text hand out a
    /// reference to it instead of a copy.
    fn field_owned(&self, index: usize) -> Value {
        self.field(index).to_value()
    }
}

impl<'a> FieldSource<'a> for &'a [Value] {
    fn field(&self, index: usize) -> ValueRef<'a> {
        self.get(index).map(ValueRef::from).unwrap_or(ValueRef::Null)
    }

    fn field_owned(&self, index: usize) -> Value {
        self.get(index).cloned().unwrap_or(Value::Null)
    }
}

/// The result of evaluating an expression: borrowed when it is a field.
#[derive(Clone, Debug)]
pub enum Evaluated<'a> {
    /// A value borrowed from the row.
    Borrowed(ValueRef<'a>),
    /// A computed value.
    Owned(Value),
}

impl Evaluated<'_> {
    /// A borrowed view of the value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Evaluated::Borrowed(v) => *v,
            Evaluated::Owned(v) => ValueRef::from(v),
        }
    }

    /// The value, owned.
    pub fn into_value(self) -> Value {
        match self {
            Evaluated::Borrowed(v) => v.to_value(),
            Evaluated::Owned(v) => v,
        }
    }
}

impl Expr {
    /// Evaluates the expression over one row.
    pub fn eval<'a>(&'a self, row: &impl FieldSource<'a>) -> Evaluated<'a> {
        match self {
            Expr::Field(index) => Evaluated::Borrowed(row.field(*index)),
            Expr::Literal(value) => Evaluated::Borrowed(ValueRef::from(value)),
            Expr::Call(func, arg) => Evaluated::Owned(apply(*func, arg.eval(row).as_ref())),
            _ => Evaluated::Borrowed(ValueRef::Bool(self.test(row))),
        }
    }

    /// Evaluates the expression over one row into an owned value.
    pub fn value<'a>(&'a self, row: &impl FieldSource<'a>) -> Value {
        match self {
            Expr::Field(index) => row.field_owned(*index),
            Expr::Literal(value) => value.clone(),
            _ => self.eval(row).into_value(),
        }
    }

    /// Evaluates a boolean expression; null counts as false.
    pub fn test<'a>(&'a self, row: &impl FieldSource<'a>) -> bool {
        match self {
            Expr::Compare(op, left, right) => {
                let (left, right) = (left.eval(row), right.eval(row));
                compare(left.as_ref(), right.as_ref()).is_some_and(|ordering| match op {
                    CmpOp::Eq => ordering.is_eq(),
                    CmpOp::Ne => ordering.is_ne(),
                    CmpOp::Lt => ordering.is_lt(),
                    CmpOp::Le => ordering.is_le(),
                    CmpOp::Gt => ordering.is_gt(),
                    CmpOp::Ge => ordering.is_ge(),
                })
            }
            Expr::In(expr, list, negated) => {
                let value = expr.eval(row);
                let value = value.as_ref();
                if value == ValueRef::Null {
                    return false;
                }
                let found = list.iter().any(|item| compare(value, ValueRef::from(item)).is_some_and(|o| o.is_eq()));
                found != *negated
            }
            Expr::IsNull(expr, negated) => (expr.eval(row).as_ref() == ValueRef::Null) != *negated,
            Expr::And(parts) => parts.iter().all(|p| p.test(row)),
            Expr::Or(parts) => parts.iter().any(|p| p.test(row)),
            Expr::Not(inner) => !inner.test(row),
            Expr::Field(_) | Expr::Literal(_) | Expr::Call(..) => self.eval(row).as_ref() == ValueRef::Bool(true),
        }
    }
}

/// Orders two values of compatible types; `None` if either is null.
fn compare(left: ValueRef<'_>, right: ValueRef<'_>) -> Option<std::cmp::Ordering> {
    use ValueRef::*;
    match (left, right) {
        (Null, _) | (_, Null) => None,
        (UInt(a), Int(b)) => Some(i128::from(a).cmp(&i128::from(b))),
        (Int(a), UInt(b)) => Some(i128::from(a).cmp(&i128::from(b))),
        (a, b) => Some(a.cmp(&b)),
    }
}

fn apply(func: Func, arg: ValueRef<'_>) -> Value {
    match (func, arg) {
        (Func::Date, ValueRef::Timestamp(t)) => Value::Date(t.utc_day()),
        (Func::Date, ValueRef::Date(d)) => Value::Date(d),
        (Func::Month, ValueRef::Timestamp(t)) => Value::Text(t.utc_month().into()),
        (Func::Month, ValueRef::Date(d)) => Value::Text(date_month(d).into()),
        (Func::Year, ValueRef::Timestamp(t)) => Value::Int(i64::from(t.utc_year())),
        (Func::Year, ValueRef::Date(d)) => Value::Int(i64::from(date_year(d))),
        _ => Value::Null,
    }
}

// ---------------------------------------------------------------- lexing --

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Int(i128),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "'{s}'"),
            Token::Int(i) => write!(f, "{i}"),
            Token::Str(s) => write!(f, "'{s}'"),
            Token::Op(op) => write!(f, "'{op}'"),
            Token::LParen => f.write_str("'('"),
            Token::RParen => f.write_str("')'"),
            Token::Comma => f.write_str("','"),
            Token::End => f.write_str("the end of the expression"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(Token, usize)>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push((Token::Ident(chars[start..i].iter().collect()), start));
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '_') {
                i += 1;
            }
            let digits: String = chars[start..i].iter().filter(|c| **c != '_').collect();
            if i < chars.len() && chars[i] == '.' {
                return error(start, "numbers must be integers (money is in cents)");
            }
            match digits.parse::<i128>() {
                Ok(n) if n >= i128::from(i64::MIN) && n <= i128::from(u64::MAX) => tokens.push((Token::Int(n), start)),
                _ => return error(start, format!("number {digits} is out of range")),
            }
        } else if c == '\'' || c == '"' {
            let quote = c;
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return error(start, "text literal is not closed; add the closing quote"),
                    Some(&q) if q == quote => {
                        if chars.get(i + 1) == Some(&quote) {
                            value.push(quote);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
            tokens.push((Token::Str(value), start));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = match two.as_str() {
                "==" => Some(("=", 2)),
                "!=" => Some(("!=", 2)),
                "<>" => Some(("!=", 2)),
                "<=" => Some(("<=", 2)),
                ">=" => Some((">=", 2)),
                _ => match c {
                    '=' => Some(("=", 1)),
                    '<' => Some(("<", 1)),
                    '>' => Some((">", 1)),
                    _ => None,
                },
            };
            if let Some((op, width)) = op {
                tokens.push((Token::Op(op), start));
                i += width;
            } else {
                match c {
                    '(' => tokens.push((Token::LParen, start)),
                    ')' => tokens.push((Token::RParen, start)),
                    ',' => tokens.push((Token::Comma, start)),
                    _ => return error(start, format!("unexpected character '{c}'")),
                }
                i += 1;
            }
        }
    }
    tokens.push((Token::End, chars.len()));
    Ok(tokens)
}

// --------------------------------------------------------------- parsing --

/// An expression as written, before type checking.
#[derive(Clone, Debug)]
enum Ast {
    Ident(String, usize),
    Int(i128, usize),
    Str(String, usize),
    Bool(bool, usize),
    Null(usize),
    Call(String, usize, Vec<Ast>),
    Compare(CmpOp, usize, Box<Ast>, Box<Ast>),
    In(Box<Ast>, usize, Vec<Ast>, bool),
    IsNull(Box<Ast>, bool),
    And(Vec<Ast>),
    Or(Vec<Ast>),
    Not(Box<Ast>, usize),
}

impl Ast {
    fn offset(&self) -> usize {
        match self {
            Ast::Ident(_, o) | Ast::Int(_, o) | Ast::Str(_, o) | Ast::Bool(_, o) | Ast::Null(o) => *o,
            Ast::Call(_, o, _) | Ast::Not(_, o) => *o,
            Ast::Compare(_, _, left, _) | Ast::In(left, ..) | Ast::IsNull(left, ..) => left.offset(),
            Ast::And(parts) | Ast::Or(parts) => parts.first().map_or(0, Ast::offset),
        }
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.at.min(self.tokens.len() - 1)].0
    }

    fn offset(&self) -> usize {
        self.tokens[self.at.min(self.tokens.len() - 1)].1
    }

    fn next(&mut self) -> (Token, usize) {
        let token = self.tokens[self.at.min(self.tokens.len() - 1)].clone();
        self.at += 1;
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Token::Ident(w) if w.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, token: Token, what: &str) -> Result<(), ExprError> {
        if *self.peek() == token {
            self.at += 1;
            Ok(())
        } else {
            error(self.offset(), format!("expected {what}, found {}", self.peek()))
        }
    }

    fn or(&mut self) -> Result<Ast, ExprError> {
        let mut parts = vec![self.and()?];
        while self.keyword("or") {
            self.at += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Ast::Or(parts) })
    }

    fn and(&mut self) -> Result<Ast, ExprError> {
        let mut parts = vec![self.not()?];
        while self.keyword("and") {
            self.at += 1;
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Ast::And(parts) })
    }

    fn not(&mut self) -> Result<Ast, ExprError> {
        if self.keyword("not") {
            let offset = self.offset();
            self.at += 1;
            return Ok(Ast::Not(Box::new(self.not()?), offset));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Ast, ExprError> {
        let left = self.operand()?;
        if let Token::Op(op) = self.peek().clone() {
            let offset = self.offset();
            self.at += 1;
            let op = match op {
                "=" => CmpOp::Eq,
                "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                _ => CmpOp::Ge,
            };
            let right = self.operand()?;
            return Ok(Ast::Compare(op, offset, Box::new(left), Box::new(right)));
        }
        let negated = self.keyword("not");
        if negated {
            self.at += 1;
            if !self.keyword("in") {
                return error(self.offset(), format!("expected 'in' after 'not', found {}", self.peek()));
            }
        }
        if self.keyword("in") {
            let offset = self.offset();
            self.at += 1;
            self.expect(Token::LParen, "'(' to start the list after 'in'")?;
            let mut items = vec![self.operand()?];
            while *self.peek() == Token::Comma {
                self.at += 1;
                items.push(self.operand()?);
            }
            self.expect(Token::RParen, "')' or ',' in the list after 'in'")?;
            return Ok(Ast::In(Box::new(left), offset, items, negated));
        }
        if self.keyword("is") {
            self.at += 1;
            let negated = self.keyword("not");
            if negated {
                self.at += 1;
            }
            if !self.keyword("null") {
                return error(self.offset(), format!("expected 'null' after 'is', found {}", self.peek()));
            }
            self.at += 1;
            return Ok(Ast::IsNull(Box::new(left), negated));
        }
        Ok(left)
    }

    fn operand(&mut self) -> Result<Ast, ExprError> {
        let (token, offset) = self.next();
        match token {
            Token::Int(n) => Ok(Ast::Int(n, offset)),
            Token::Str(s) => Ok(Ast::Str(s, offset)),
            Token::LParen => {
                let inner = self.or()?;
                self.expect(Token::RParen, "')'")?;
                Ok(inner)
            }
            Token::Ident(name) => {
                let lower = name.to_ascii_lowercase();
                match lower.as_str() {
                    "true" => return Ok(Ast::Bool(true, offset)),
                    "false" => return Ok(Ast::Bool(false, offset)),
                    "null" => return Ok(Ast::Null(offset)),
                    _ => {}
                }
                if *self.peek() == Token::LParen {
                    self.at += 1;
                    let mut args = Vec::new();
                    if *self.peek() != Token::RParen {
                        args.push(self.or()?);
                        while *self.peek() == Token::Comma {
                            self.at += 1;
                            args.push(self.or()?);
                        }
                    }
                    self.expect(Token::RParen, "')' to close the function call")?;
                    return Ok(Ast::Call(name, offset, args));
                }
                Ok(Ast::Ident(name, offset))
            }
            other => error(offset, format!("expected a field name, a number or a 'text' literal, found {other}")),
        }
    }
}

// ---------------------------------------------------------- type checking --

/// The type of a checked expression; literals that may still adapt to the
/// other side of a comparison have their own kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Known(FieldType),
    IntLiteral,
    TextLiteral,
    Null,
}

impl Ty {
    fn describe(self) -> String {
        match self {
            Ty::Known(t) => t.name().to_string(),
            Ty::IntLiteral => "integer".into(),
            Ty::TextLiteral => "text".into(),
            Ty::Null => "null".into(),
        }
    }
}

/// Parses `text` and checks it against `scope`; returns the expression and
/// its type (a lone literal gets the literal's natural type).
pub fn compile(text: &str, scope: &Scope) -> Result<(Expr, FieldType), ExprError> {
    let (expr, ty) = check(&parse(text)?, scope)?;
    let ty = match ty {
        Ty::Known(t) => t,
        Ty::IntLiteral => FieldType::Int,
        Ty::TextLiteral => FieldType::Text,
        Ty::Null => return error(0, "the expression is always null"),
    };
    Ok((expr, ty))
}

/// Parses `text` without checking its fields: for a view whose relation
/// is unknown, so that its syntax errors are still reported with the rest.
pub fn check_syntax(text: &str) -> Result<(), ExprError> {
    parse(text).map(drop)
}

fn parse(text: &str) -> Result<Ast, ExprError> {
    if text.trim().is_empty() {
        return error(0, "the expression is empty");
    }
    let mut parser = Parser { tokens: lex(text)?, at: 0 };
    let ast = parser.or()?;
    if *parser.peek() != Token::End {
        return error(
            parser.offset(),
            format!("unexpected {} here; combine conditions with 'and' / 'or'", parser.peek()),
        );
    }
    Ok(ast)
}

/// As [`compile`], and requires a boolean result.
pub fn compile_condition(text: &str, scope: &Scope) -> Result<Expr, ExprError> {
    let (expr, ty) = compile(text, scope)?;
    if ty != FieldType::Bool {
        return error(
            0,
            format!("a condition must be true or false, but this is of type {ty}; compare it, e.g. `field = 'value'`"),
        );
    }
    Ok(expr)
}

fn check(ast: &Ast, scope: &Scope) -> Result<(Expr, Ty), ExprError> {
    match ast {
        Ast::Ident(name, offset) => match scope.lookup(name) {
            Some((index, ty)) => Ok((Expr::Field(index), Ty::Known(ty))),
            None => {
                error(*offset, format!("{} has no field '{name}'; its fields are: {}", scope.what(), scope.names()))
            }
        },
        Ast::Int(n, _) => Ok((Expr::Literal(int_value(*n)), Ty::IntLiteral)),
        Ast::Str(s, _) => Ok((Expr::Literal(Value::Text(s.as_str().into())), Ty::TextLiteral)),
        Ast::Bool(b, _) => Ok((Expr::Literal(Value::Bool(*b)), Ty::Known(FieldType::Bool))),
        Ast::Null(_) => Ok((Expr::Literal(Value::Null), Ty::Null)),
        Ast::Call(name, offset, args) => {
            let func = match name.to_ascii_lowercase().as_str() {
                "date" => Func::Date,
                "month" => Func::Month,
                "year" => Func::Year,
                _ => return error(*offset, format!("unknown function '{name}'; available: {FUNCTIONS}")),
            };
            if args.len() != 1 {
                return error(*offset, format!("{name}() takes one argument (got {})", args.len()));
            }
            let (arg, ty) = check(&args[0], scope)?;
            let accepts = match func {
                Func::Date => matches!(ty, Ty::Known(FieldType::Timestamp | FieldType::Date)),
                Func::Month | Func::Year => matches!(ty, Ty::Known(FieldType::Timestamp | FieldType::Date)),
            };
            if !accepts {
                return error(args[0].offset(), format!("{name}() takes a timestamp or a date, not {}", ty.describe()));
            }
            let result = match func {
                Func::Date => FieldType::Date,
                Func::Month => FieldType::Text,
                Func::Year => FieldType::Int,
            };
            Ok((Expr::Call(func, Box::new(arg)), Ty::Known(result)))
        }
        Ast::Compare(op, offset, left, right) => {
            let (left_expr, left_ty) = check(left, scope)?;
            let (right_expr, right_ty) = check(right, scope)?;
            let (left_expr, right_expr) = unify(left_expr, left_ty, right_expr, right_ty, left, right, *offset)?;
            Ok((Expr::Compare(*op, Box::new(left_expr), Box::new(right_expr)), Ty::Known(FieldType::Bool)))
        }
        Ast::In(target, offset, items, negated) => {
            let (target_expr, target_ty) = check(target, scope)?;
            let mut values = Vec::new();
            for item in items {
                let (item_expr, item_ty) = check(item, scope)?;
                let Expr::Literal(_) = item_expr else {
                    return error(item.offset(), "the list after 'in' may hold only literals");
                };
                let (_, literal) = unify(target_expr.clone(), target_ty, item_expr, item_ty, target, item, *offset)?;
                if let Expr::Literal(value) = literal {
                    values.push(value);
                }
            }
            Ok((Expr::In(Box::new(target_expr), values, *negated), Ty::Known(FieldType::Bool)))
        }
        Ast::IsNull(target, negated) => {
            let (target_expr, _) = check(target, scope)?;
            Ok((Expr::IsNull(Box::new(target_expr), *negated), Ty::Known(FieldType::Bool)))
        }
        Ast::And(parts) | Ast::Or(parts) => {
            let mut checked = Vec::new();
            for part in parts {
                checked.push(condition(part, scope)?);
            }
            Ok((
                if matches!(ast, Ast::And(_)) { Expr::And(checked) } else { Expr::Or(checked) },
                Ty::Known(FieldType::Bool),
            ))
        }
        Ast::Not(inner, _) => Ok((Expr::Not(Box::new(condition(inner, scope)?)), Ty::Known(FieldType::Bool))),
    }
}

fn condition(ast: &Ast, scope: &Scope) -> Result<Expr, ExprError> {
    let (expr, ty) = check(ast, scope)?;
    if ty != Ty::Known(FieldType::Bool) {
        return error(
            ast.offset(),
            format!("expected a condition (true or false) here, found a value of type {}", ty.describe()),
        );
    }
    Ok(expr)
}

fn int_value(n: i128) -> Value {
    match i64::try_from(n) {
        Ok(v) => Value::Int(v),
        Err(_) => Value::UInt(u64::try_from(n).unwrap_or(u64::MAX)),
    }
}

/// Makes the two sides of a comparison comparable: literals adapt to the
/// other side (`'2024-03-01'` becomes a date next to a date field).
fn unify(
    left: Expr,
    left_ty: Ty,
    right: Expr,
    right_ty: Ty,
    left_ast: &Ast,
    right_ast: &Ast,
    op_offset: usize,
) -> Result<(Expr, Expr), ExprError> {
    let numeric = |t: Ty| matches!(t, Ty::IntLiteral | Ty::Known(FieldType::UInt | FieldType::Int));
    if numeric(left_ty) && numeric(right_ty) || left_ty == right_ty || left_ty == Ty::Null || right_ty == Ty::Null {
        return Ok((left, right));
    }
    match (left_ty, right_ty) {
        (Ty::Known(t), Ty::TextLiteral) => Ok((left, coerce_text(right, t, right_ast)?)),
        (Ty::TextLiteral, Ty::Known(t)) => Ok((coerce_text(left, t, left_ast)?, right)),
        _ => error(op_offset, format!("cannot compare {} with {}", left_ty.describe(), right_ty.describe())),
    }
}

fn coerce_text(literal: Expr, target: FieldType, ast: &Ast) -> Result<Expr, ExprError> {
    let Expr::Literal(Value::Text(text)) = &literal else { return Ok(literal) };
    match target {
        FieldType::Text => Ok(literal),
        FieldType::Date => match parse_date(text) {
            Some(day) => Ok(Expr::Literal(Value::Date(day))),
            None => error(ast.offset(), format!("'{text}' is not a date; write dates as 'YYYY-MM-DD'")),
        },
        FieldType::Timestamp => {
            if let Some(t) = Timestamp::parse_rfc3339(text) {
                return Ok(Expr::Literal(Value::Timestamp(t)));
            }
            match parse_date(text) {
                Some(day) => Ok(Expr::Literal(Value::Timestamp(Timestamp(i64::from(day) * 86_400_000_000_000)))),
                None => error(
                    ast.offset(),
                    format!(
                        "'{text}' is not a timestamp; write RFC 3339 ('2024-03-01T12:00:00Z') or a date ('2024-03-01')"
                    ),
                ),
            }
        }
        other => error(ast.offset(), format!("cannot compare {other} with text '{text}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope::new(
            "relation 'orders'",
            [
                ("status".to_string(), FieldType::Text),
                ("total_cents".to_string(), FieldType::Int),
                ("store_id".to_string(), FieldType::UInt),
                ("created_at".to_string(), FieldType::Timestamp),
            ],
        )
    }

    fn row(status: &str, total: i64) -> Vec<Value> {
        vec![
            Value::Text(status.into()),
            Value::Int(total),
            Value::UInt(7),
            Value::Timestamp(Timestamp::parse_rfc3339("2024-03-01T12:00:00Z").unwrap()),
        ]
    }

    fn holds(text: &str, row: &[Value]) -> bool {
        compile_condition(text, &scope()).unwrap().test(&row)
    }

    #[test]
    fn evaluates_conditions() {
        let placed = row("placed", 500);
        assert!(holds("status = 'placed'", &placed));
        assert!(holds("status != 'cancelled' and total_cents >= 500", &placed));
        assert!(!holds("not (status = 'placed' or total_cents > 1000)", &placed));
        assert!(holds("status in ('placed', 'x')", &placed));
        assert!(holds("store_id not in (8, 9)", &placed));
        assert!(holds("date(created_at) = '2024-03-01'", &placed));
        assert!(holds("created_at >= '2024-03-01' and created_at < '2024-03-02T00:00:00Z'", &placed));
        assert!(holds("month(created_at) = '2024-03' and year(created_at) = 2024", &placed));
        assert!(holds("total_cents is not null", &placed));
    }

    #[test]
    fn reports_errors_at_their_offset() {
        let err = compile_condition("status = 'placed' and totl > 5", &scope()).unwrap_err();
        assert_eq!(err.offset, 22);
        assert!(
            err.message.starts_with("relation 'orders' has no field 'totl'; its fields are: status,"),
            "{}",
            err.message
        );
        let err = compile_condition("total_cents = 'abc'", &scope()).unwrap_err();
        assert_eq!((err.offset, err.message.as_str()), (14, "cannot compare integer with text 'abc'"));
        assert_eq!(compile_condition("status", &scope()).unwrap_err().offset, 0);
        assert_eq!(compile_condition("status = 'x", &scope()).unwrap_err().offset, 9);
        assert_eq!(compile_condition("created_at > 'soon'", &scope()).unwrap_err().offset, 13);
        assert_eq!(compile_condition("total_cents > 1.5", &scope()).unwrap_err().offset, 14);
        assert_eq!(compile_condition("status = 'a' status", &scope()).unwrap_err().offset, 13);
        assert!(
            compile_condition("floor(total_cents) > 1", &scope()).unwrap_err().message.starts_with("unknown function")
        );
    }
}
